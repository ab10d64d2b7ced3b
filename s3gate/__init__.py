"""s3gate: the S3 API in front of a ringcache cluster, so any S3 client reads through it."""
