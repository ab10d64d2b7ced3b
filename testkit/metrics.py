"""Reading one sample out of Prometheus text, strictly: a test that reads a metric or a
label the process does not export fails, instead of reading 0."""

from __future__ import annotations

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["metric_sum"]

#: Sample names a family of each type exports besides the family's own name (the parser
#: names a counter family without its ``_total``, which every sample of it carries).
_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("", "_count", "_sum"),
}


def _sample_names(family: Metric) -> set[str]:
    names = {family.name + s for s in _SUFFIXES.get(family.type, ("",))}
    return names | {sample.name for sample in family.samples}


def _declared_labels(sample_name: str) -> tuple[str, ...]:
    """Label names the project's code declares for the metric named ``sample_name``.

    A labelled family with no label set observed yet exposes only its ``# TYPE`` line, so
    its label names come from the declaration the node and the mount run.
    """
    from prometheus_client import REGISTRY

    import cachenode.metrics  # noqa: F401 (each import registers its metrics)
    import clientlib.metrics  # noqa: F401
    import mountd.metrics  # noqa: F401

    collector = REGISTRY._names_to_collectors.get(sample_name)  # no public lookup exists
    return () if collector is None else tuple(getattr(collector, "_labelnames", ()))


def _parse_labels(name: str, labels: str) -> dict[str, str]:
    """``'a="x",b="y"'`` as a dict, by the same parser; a ValueError says what is wrong."""
    if not labels.strip():
        return {}
    (family,) = text_string_to_metric_families(f"{name}{{{labels}}} 0\n")
    return dict(family.samples[0].labels)


def metric_sum(text: str, name: str, labels: str = "") -> float:
    """One sample (``name{labels}``, or the sum over label sets) of Prometheus text.

    A metric the text has no ``# TYPE`` for, or a label name its family does not carry,
    is an AssertionError naming it: a renamed metric or label must fail the test that
    reads it, not read as 0. A label *value* never seen is a legitimate 0.
    """
    families = text_string_to_metric_families(text)
    family = next((f for f in families if name in _sample_names(f)), None)
    assert family is not None, f"metric {name!r} is not exported (no '# TYPE' line for it)"
    try:
        wanted = _parse_labels(name, labels)
    except ValueError as exc:
        raise AssertionError(f"cannot parse labels {labels!r} of {name!r}: {exc}") from None
    samples = [s for s in family.samples if s.name == name]
    if wanted:
        if samples:
            names = {key for s in samples for key in s.labels}
        else:
            names = set(_declared_labels(name))
        missing = set(wanted) - names
        assert not missing, f"metric {name!r} has no label {sorted(missing)}: {sorted(names)}"
    return float(
        sum(s.value for s in samples if all(s.labels.get(k) == v for k, v in wanted.items()))
    )
