"""What a cluster accepts: the longest workload name per kind, and resource quantities.

Names. Kubernetes derives other names and label values from a workload's name, and a
derived one over 63 characters makes the controller fail long after ``kubectl apply``
said ``created`` (the schema checks none of it). Per kind, the longest name that still
yields valid pod names, label values and hostnames:

=================  =====  ===================================================================
kind               limit  why
=================  =====  ===================================================================
job                63     the pods' ``batch.kubernetes.io/job-name`` label value is the name
indexed-job        63-1-d the pod's hostname is ``<name>-<index>`` (Job controller:
                          ``Hostname = "%s-%d"``), a DNS label of at most 63; ``d`` is the
                          number of digits of the highest index, ``completions - 1``
cronjob            52     each Job is ``<name>-<scheduled minutes>``; the API server refuses a
                          CronJob name over 63 - 11 (``DNS1035LabelMaxLength-11``)
statefulset        52     the pods' ``controller-revision-hash`` label is ``<name>-<hash>``, the
                          hash up to 10 characters (``SafeEncodeString`` of a uint32):
                          kubernetes/kubernetes#64023
=================  =====  ===================================================================

Pod names themselves are safe: ``generateName`` is cut to 58 characters before the 5
random ones are added. The claim ``<name>-checkpoints`` and the Secret ``<name>-store``
are DNS subdomains (253), which any of these names leaves room for.

Quantities. ``--cpu`` and ``--memory`` take Kubernetes quantities (``100m``, ``0.5``,
``256Mi``, ``1G``); a memory of ``256m`` (millibytes: a quarter of a byte) is refused as
the typo it always is, and a limit below its request is refused as the API server would.
"""

from __future__ import annotations

import re
from decimal import Decimal

from ..errors import UsageError

__all__ = ["DNS_LABEL_MAX", "max_name_length", "name_limit_reason", "parse_quantity"]

DNS_LABEL_MAX = 63
_QUANTITY = re.compile(r"(?P<num>\d+(?:\.\d*)?|\.\d+)(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E|[eE][+-]?\d+)?")
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "m": Decimal("0.001"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
}


def max_name_length(kind: str, completions: int | None = None) -> int:
    """The longest name ``kind`` may have (see the module docstring)."""
    if kind in ("cronjob", "statefulset"):
        return DNS_LABEL_MAX - 11
    if kind == "indexed-job":
        highest = max((completions or 1) - 1, 0)
        return DNS_LABEL_MAX - 1 - len(str(highest))
    return DNS_LABEL_MAX


def name_limit_reason(kind: str, completions: int | None = None) -> str:
    """Why ``max_name_length(kind, completions)`` is what it is, for the refusal."""
    limit = max_name_length(kind, completions)
    if kind == "cronjob":
        return (
            f"a CronJob name has at most {limit} characters: each Job it starts is named NAME-<11 characters of "
            "schedule time>, which must fit 63 (the API server refuses longer CronJob names)"
        )
    if kind == "statefulset":
        return (
            f"a StatefulSet name has at most {limit} characters: its pods carry the label controller-revision-hash "
            "= NAME-<10-character hash>, and a label value over 63 characters stops every pod from being "
            "created (kubernetes/kubernetes#64023)"
        )
    if kind == "indexed-job":
        highest = max((completions or 1) - 1, 0)
        return (
            f"with --completions {completions} an Indexed Job name has at most {limit} characters: the pod of "
            f"index {highest} gets the hostname NAME-{highest}, which must be a DNS label of at most 63"
        )
    return f"a Job name has at most {limit} characters: it is the value of its pods' job-name label (at most 63)"


def parse_quantity(text: str, *, what: str, memory: bool) -> Decimal:
    """The value of the Kubernetes quantity ``text`` (cores or bytes), or UsageError naming ``what``."""
    m = _QUANTITY.fullmatch(str(text).strip())
    example = "256Mi or 1Gi" if memory else "100m, 0.5 or 2"
    if not m:
        raise UsageError(f"invalid {what} {text!r}: use a Kubernetes quantity such as {example}")
    number, suffix = Decimal(m.group("num")), m.group("suffix") or ""
    if memory and suffix == "m":
        raise UsageError(f"invalid {what} {text!r}: 'm' means thousandths (millibytes); use Mi (mebibytes) or M")
    if suffix in _BINARY:
        value = number * _BINARY[suffix]
    elif suffix in _DECIMAL:
        value = number * _DECIMAL[suffix]
    elif suffix:
        value = number * Decimal(10) ** int(suffix[1:])
    else:
        value = number
    if value <= 0:
        raise UsageError(f"invalid {what} {text!r}: it must be more than zero")
    if not memory and value < Decimal("0.001"):
        raise UsageError(f"invalid {what} {text!r}: the smallest CPU amount is 1m")
    return value
