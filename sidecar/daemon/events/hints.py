"""What an AWS change event says: the name of a secret that changed, or why the message is dropped.

An event is a hint, never a value: it only names a secret to fetch again by name. Accepted, from
EventBridge (raw, as an SQS target or SNS raw delivery sends it, or inside an SNS envelope):

- `aws.secretsmanager` / `Secret Label Updated`: `detail.name` (a staging label moved; AWS sends
  none for AWSPENDING and AWSPREVIOUS, so a rotation is announced when AWSCURRENT moves);
- `aws.secretsmanager` / `AWS API Call via CloudTrail` for the calls that change a value or its
  existence (with a CloudTrail trail): `requestParameters.secretId` (a name or an ARN), or
  `requestParameters.name` for CreateSecret;
- `aws.ssm` / `Parameter Store Change`: `detail.name`, for every operation.

Anything else (another source or detail type, a name outside the configured prefixes, a body
that is not such an event) is dropped with its reason, which the metrics count; the reason never
holds a name or a value.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from sidecar import SECRETSMANAGER, SSM

LABEL_UPDATED = "Secret Label Updated"
CLOUDTRAIL = "AWS API Call via CloudTrail"
PARAMETER_CHANGE = "Parameter Store Change"
# The CloudTrail calls after which a secret's value or existence may differ.
CHANGING_CALLS = frozenset(
    {"CreateSecret", "PutSecretValue", "UpdateSecret", "UpdateSecretVersionStage", "DeleteSecret", "RestoreSecret"}
)
# A secret's ARN ends with its name, a dash and six random characters.
SECRET_ARN = re.compile(r"^arn:aws[a-z-]*:secretsmanager:[^:]*:\d*:secret:(?P<name>.+)-[A-Za-z0-9]{6}$")

# Why a message is dropped (the `outcome` label of sidecar_events_received_total).
MALFORMED = "malformed"
FOREIGN = "foreign"  # another source or detail type, or an unchanging CloudTrail call
OUTSIDE = "outside_prefixes"
ACCEPTED = "accepted"


@dataclass(frozen=True)
class Hint:
    outcome: str  # ACCEPTED, or why the message is dropped
    name: str | None = None  # the secret that changed, when accepted
    time: str | None = None  # the event's own `time` (ISO 8601), when it has one


# Each store's event: (source, detail type) -> how to read the name from `detail`.
def _label_updated(detail: dict[str, Any]) -> Any:
    return detail.get("name")


def _api_call(detail: dict[str, Any]) -> Any:
    if detail.get("eventSource") != "secretsmanager.amazonaws.com" or detail.get("eventName") not in CHANGING_CALLS:
        return None
    parameters = detail.get("requestParameters")
    if not isinstance(parameters, dict):
        return None
    name = parameters.get("secretId") or parameters.get("name")
    if isinstance(name, str) and (arn := SECRET_ARN.match(name)):
        return arn["name"]
    return name


EVENTS = {
    SECRETSMANAGER: {
        ("aws.secretsmanager", LABEL_UPDATED): _label_updated,
        ("aws.secretsmanager", CLOUDTRAIL): _api_call,
    },
    SSM: {("aws.ssm", PARAMETER_CHANGE): _label_updated},
}


class Reader:
    """Reads message bodies for one store and its prefixes (each ends with its separator)."""

    def __init__(self, store: str, prefixes: list[str]) -> None:
        self._events = EVENTS[store]
        self._prefixes = tuple(prefixes)

    def read(self, body: str) -> Hint:
        event = _event(body)
        if event is None:
            return Hint(MALFORMED)
        detail = event.get("detail")
        name_of = self._events.get((event.get("source"), event.get("detail-type")))  # type: ignore[arg-type]
        if not isinstance(detail, dict):
            return Hint(MALFORMED if name_of is not None else FOREIGN)
        if name_of is None:
            return Hint(FOREIGN)
        name = name_of(detail)
        if name is None and event.get("detail-type") == CLOUDTRAIL:
            return Hint(FOREIGN)  # a call that changes nothing a lookup reads
        if not isinstance(name, str) or not name:
            return Hint(MALFORMED)
        if not name.startswith(self._prefixes):
            return Hint(OUTSIDE)
        time = event.get("time")
        return Hint(ACCEPTED, name, time if isinstance(time, str) else None)


def _event(body: str) -> dict[str, Any] | None:
    """The EventBridge event in a message body: the body itself, or an SNS envelope's Message."""
    try:
        message = json.loads(body)
        if isinstance(message, dict) and message.get("Type") == "Notification" and "Message" in message:
            message = json.loads(message["Message"])
    except (ValueError, TypeError):
        return None
    return message if isinstance(message, dict) else None
