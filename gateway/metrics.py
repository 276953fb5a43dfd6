"""Prometheus metrics of the gateway, rendered in the text exposition format.

Each metric is written by one event loop only, so plain Python numbers are enough.
Ingest processes send :meth:`GatewayMetrics.state` to the gateway process, which sums
them with :meth:`GatewayMetrics.absorb`.
"""

import bisect
import math


def _escape(value):
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value):
    if value == math.inf:
        return "+Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class Counter:
    def __init__(self, name, help_text, label=None):
        self.name, self.help, self.label = name, help_text, label
        self.values = {} if label else {None: 0}

    def inc(self, amount=1, label_value=None):
        self.values[label_value] = self.values.get(label_value, 0) + amount

    def total(self):
        return sum(self.values.values())

    def state(self):
        return dict(self.values)

    def absorb(self, state):
        for label_value, n in state.items():
            self.inc(n, label_value)

    def render(self):
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        for value, n in sorted(self.values.items(), key=lambda kv: str(kv[0])):
            if self.label:
                out.append(f'{self.name}{{{self.label}="{_escape(value)}"}} {_num(n)}')
            else:
                out.append(f"{self.name} {_num(n)}")
        return out


class Gauge:
    """A value read when scraped, from ``read()`` (a callable)."""

    def __init__(self, name, help_text, read):
        self.name, self.help, self.read = name, help_text, read

    def render(self):
        return [
            f"# HELP {self.name} {self.help}",
            f"# TYPE {self.name} gauge",
            f"{self.name} {_num(self.read())}",
        ]


class Histogram:
    def __init__(self, name, help_text, buckets):
        self.name, self.help = name, help_text
        self.bounds = sorted(buckets)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value):
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def state(self):
        return list(self.counts), self.sum, self.count

    def absorb(self, state):
        counts, total, count = state
        self.counts = [a + b for a, b in zip(self.counts, counts, strict=True)]
        self.sum += total
        self.count += count

    def render(self):
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        cumulative = 0
        for bound, n in zip(self.bounds + [math.inf], self.counts, strict=True):
            cumulative += n
            out.append(f'{self.name}_bucket{{le="{_num(bound)}"}} {cumulative}')
        out.append(f"{self.name}_sum {repr(self.sum)}")
        out.append(f"{self.name}_count {self.count}")
        return out


_LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]


class GatewayMetrics:
    """Every metric the gateway exports. Gauges are attached by the app once wired."""

    def __init__(self):
        self.accepted = Counter(
            "wattshare_readings_accepted_total", "Readings stored (durably committed)."
        )
        self.duplicates = Counter(
            "wattshare_readings_duplicate_total",
            "Readings received again with identical bytes (acknowledged, not stored twice).",
        )
        self.rejected = Counter(
            "wattshare_readings_rejected_total",
            "Requests stopped by a rejected reading or refused as a whole, by reason.",
            label="reason",
        )
        self.dropped = Counter(
            "wattshare_coap_datagrams_dropped_total",
            "Datagrams dropped because they are not valid CoAP or not a request "
            "(never given a response; a CON may get a Reset).",
        )
        self.limited = Counter(
            "wattshare_coap_datagrams_limited_total",
            "Datagrams dropped unanswered because their source address sent more than "
            "[coap] max_datagrams_per_source in a second.",
        )
        self.responses = Counter(
            "wattshare_coap_responses_total", "CoAP responses sent, by code.", label="code"
        )
        self.latency = Histogram(
            "wattshare_ingest_latency_seconds",
            "Time from a request reaching the handler to its response (after COMMIT).",
            _LATENCY_BUCKETS,
        )
        self.enrolments = Counter(
            "wattshare_enrolment_requests_total",
            "POST /e enrolment requests by outcome: enrolled, repeat (enrolled before, "
            "answered again) or the reason it was refused.",
            label="outcome",
        )
        self.commissioning = Counter(
            "wattshare_commissioning_records_total",
            "POST /c commissioning records by outcome: stored or the reason it was refused.",
            label="outcome",
        )
        self.commit_seconds = Histogram(
            "wattshare_commit_seconds", "Duration of one group commit.", _LATENCY_BUCKETS
        )
        self.commit_rows = Histogram(
            "wattshare_commit_rows", "Readings per group commit.",
            [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048],
        )
        self.gauges = []

    def add_gauge(self, name, help_text, read):
        self.gauges.append(Gauge(name, help_text, read))

    def _own(self):
        return {"accepted": self.accepted, "duplicates": self.duplicates,
                "rejected": self.rejected, "dropped": self.dropped,
                "limited": self.limited, "responses": self.responses, "latency": self.latency,
                "enrolments": self.enrolments, "commissioning": self.commissioning,
                "commit_seconds": self.commit_seconds, "commit_rows": self.commit_rows}

    def state(self):
        """Counters and histograms as plain data (picklable), for :meth:`absorb`."""
        return {name: metric.state() for name, metric in self._own().items()}

    def absorb(self, state):
        """Add the counts of another :meth:`state` to these."""
        own = self._own()
        for name, metric_state in state.items():
            own[name].absorb(metric_state)

    def render(self):
        lines = []
        for metric in (*self._own().values(), *self.gauges):
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"
