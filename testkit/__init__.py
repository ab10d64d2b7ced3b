"""Test scaffolding for ringcache's tests and benchmarks; not part of the product.

The daemons themselves are started with :mod:`clientlib.launcher` (what ``ringcache-demo``
uses); this package adds what only tests and benchmarks need: an etcd secured with
throwaway certificates and users (:mod:`testkit.etcd`, :mod:`testkit.certs`), an S3
endpoint with a cloud's delays and failures (:mod:`testkit.s3proxy`), SeaweedFS as a real S3
server (:mod:`testkit.seaweed`), and a strict reader
of Prometheus samples (:mod:`testkit.metrics`). It is imported from the repository root
(pytest puts it on ``sys.path``; benchmarks run as ``python -m loadtest.<name>``).
"""

from testkit.certs import issue_cert, make_ca
from testkit.etcd import start_etcd
from testkit.metrics import metric_sum
from testkit.s3proxy import S3Proxy, forward
from testkit.seaweed import Seaweed, start_seaweed

__all__ = [
    "S3Proxy",
    "Seaweed",
    "forward",
    "issue_cert",
    "make_ca",
    "metric_sum",
    "start_etcd",
    "start_seaweed",
]
