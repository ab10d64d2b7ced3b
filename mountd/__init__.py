"""mountd: the POSIX file tree over the ringcache cluster (pyfuse3 on uvloop).

``fs`` holds the FUSE operations, ``inodes`` the inode table and metadata cache,
``prefetch`` the block tiers and read-ahead, ``writes`` the spool-and-upload of files
being written, ``localtier`` the optional on-disk tier, ``config`` the settings and
``__main__`` the ``mountd`` command.
"""
