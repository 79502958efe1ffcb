"""What ``/metrics`` reports about ``oig serve``, in the Prometheus text format: requests by route and
status, their latency as a histogram, requests in flight, tokens in and out, refusals, timeouts and
cancellations. A few lines of text: no client library needed."""

from __future__ import annotations

import bisect
import math
import threading

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
                    600.0)  # seconds: from a /health probe to a long CPU generation


class Metrics:
    """What ``/metrics`` reports, in the Prometheus text format (a few lines; no client library needed)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.latency: dict[str, list[float]] = {}  # route: a count per bucket, then +Inf, sum, count
        self.in_flight = 0
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.rejected = 0
        self.timeouts = 0
        self.cancelled = 0

    def add(self, **amounts: int) -> None:
        with self._lock:
            for name, amount in amounts.items():
                setattr(self, name, getattr(self, name) + amount)

    def observe(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[route, status] = self.requests.get((route, status), 0) + 1
            row = self.latency.setdefault(route, [0.0] * (len(_LATENCY_BUCKETS) + 3))
            row[bisect.bisect_left(_LATENCY_BUCKETS, seconds)] += 1
            row[-2] += seconds
            row[-1] += 1

    def render(self, model_loaded: bool, engine=None) -> str:
        lines: list[str] = []

        def family(name: str, kind: str, about: str, samples: list[tuple[str, dict, float]]) -> None:
            lines.extend([f"# HELP {name} {about}", f"# TYPE {name} {kind}"])
            lines.extend(f"{name}{suffix}{_labels(labels)} {_number(value)}" for suffix, labels, value in samples)

        with self._lock:
            family("oig_requests_total", "counter", "HTTP requests answered, by route and status (499: the "
                   "client left first).",
                   [("", {"route": r, "status": str(c)}, n) for (r, c), n in sorted(self.requests.items())])
            histogram = []
            for route, row in sorted(self.latency.items()):
                running = 0.0
                for bound, count in zip([*_LATENCY_BUCKETS, math.inf], row, strict=False):
                    running += count
                    histogram.append(("_bucket", {"route": route, "le": _number(bound)}, running))
                histogram += [("_sum", {"route": route}, row[-2]), ("_count", {"route": route}, row[-1])]
            family("oig_request_duration_seconds", "histogram", "Time from a request's arrival to the end of "
                   "its answer (a stream's last event).", histogram)
            family("oig_requests_in_flight", "gauge", "Chat completions admitted and not yet answered.",
                   [("", {}, self.in_flight)])
            family("oig_prompt_tokens_total", "counter", "Prompt tokens of chat completions.",
                   [("", {}, self.prompt_tokens)])
            family("oig_generated_tokens_total", "counter", "Tokens generated, cancelled and timed-out "
                   "requests included.", [("", {}, self.generated_tokens)])
            family("oig_rejected_requests_total", "counter", "Chat completions refused with 429 because "
                   "the queue was full (max_concurrency generating, max_queue waiting).", [("", {}, self.rejected)])
            family("oig_request_timeouts_total", "counter", "Chat completions stopped at their deadline.",
                   [("", {}, self.timeouts)])
            family("oig_cancelled_requests_total", "counter", "Chat completions whose client left before "
                   "the answer was complete.", [("", {}, self.cancelled)])
        family("oig_model_loaded", "gauge", "1 once the model is loaded and requests are served.",
               [("", {}, 1 if model_loaded else 0)])
        if engine is not None:
            family("oig_engine_batches_total", "counter", "Prefills the engine ran: groups of requests that "
                   "joined the generating batch together.", [("", {}, engine.batches)])
            family("oig_engine_rows_total", "counter", "Requests those prefills admitted.", [("", {}, engine.rows)])
            family("oig_engine_steps_total", "counter", "Decode steps: one forward pass, a token for every "
                   "generating request.", [("", {}, engine.steps)])
            family("oig_engine_step_rows_total", "counter", "Requests those steps generated for (step rows / "
                   "steps: the mean batch).", [("", {}, engine.step_rows)])
            family("oig_engine_busy_seconds_total", "counter", "Seconds the engine spent generating.",
                   [("", {}, round(engine.busy_s, 6))])
        return "\n".join(lines) + "\n"


def _labels(labels: dict) -> str:
    if not labels:
        return ""
    escaped = (str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for v in labels.values())
    return "{" + ",".join(f'{k}="{v}"' for k, v in zip(labels, escaped, strict=True)) + "}"


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    return str(int(value)) if float(value).is_integer() else repr(float(value))
