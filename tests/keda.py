"""The lag KEDA's `nats-jetstream` scaler computes, computed the same way (KEDA's
pkg/scalers/nats_jetstream_scaler.go): GET
`<monitoring>/jsz?acc=<account>&consumers=true&config=true`, find the account, the stream and
the consumer named in the trigger: lag = num_pending + num_ack_pending. A missing stream is an
error for KEDA; a missing consumer makes it fall back to the stream's last sequence (scaling to
the maximum)."""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass


class StreamNotFound(LookupError):
    pass


@dataclass(frozen=True)
class KedaReading:
    lag: int
    consumer_found: bool
    num_pending: int
    num_ack_pending: int
    #: Messages stored in the stream, from the same response.
    stream_messages: int


def keda_lag(monitor_url: str, account: str, stream: str, consumer: str) -> KedaReading:
    # Built like KEDA builds it: no escaping of the account (`$G`).
    url = f"{monitor_url}/jsz?acc={account}&consumers=true&config=true"
    with urllib.request.urlopen(url, timeout=5) as resp:
        data = json.load(resp)
    for acc in data.get("account_details") or []:
        if acc.get("name") != account:
            continue
        for s in acc.get("stream_detail") or []:
            if s.get("name") != stream:
                continue
            messages = int(s["state"].get("messages", 0))
            for c in s.get("consumer_detail") or []:
                if c.get("name") == consumer:
                    pending, ack_pending = int(c["num_pending"]), int(c["num_ack_pending"])
                    return KedaReading(pending + ack_pending, True, pending, ack_pending, messages)
            return KedaReading(int(s["state"]["last_seq"]), False, 0, 0, messages)
    raise StreamNotFound(f"stream {stream} not found in account {account}")
