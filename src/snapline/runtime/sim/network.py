"""The simulated network: per-channel delays, FIFO order, and faults under a reliable layer.

Theory of operation
-------------------
Every packet on channel ``src -> dst`` draws a delay from the channel's distribution (the
job-wide ``delay`` unless ``channel_delays`` overrides it). Loss and partitions happen under a
reliable-channel layer, so they never lose a packet -- they make it late: each loss (drawn
with ``loss_rate``) adds a retransmission timeout ``rto_s`` plus a fresh delay, and a packet
that would arrive while its endpoints are on different sides of a partition arrives a fresh
delay after the partition heals. On a FIFO network a packet never arrives before an earlier
packet of its channel (head-of-line blocking behind a retransmission included); without FIFO
each packet keeps its own arrival time. Duplication is decided by the driver, which drops the
second copy of a packet the way the reliable layer would (by transport id).
"""

from __future__ import annotations

import random

from snapline.protocols.base import PlainData
from snapline.runtime.sim.config import Delay, SimConfig


def describe_control(control: PlainData) -> str:
    """A short label of a control message for traces (its ``type``/``kind`` if it has one)."""
    if isinstance(control, dict):
        for key in ("type", "kind", "what", "op"):
            if key in control:
                return str(control[key])
    if isinstance(control, list | tuple) and control and isinstance(control[0], str):
        return control[0]
    text = repr(control)
    return text if len(text) <= 40 else text[:37] + "..."


class Network:
    """Arrival times of packets; counts the retransmissions and partition delays it causes."""

    __slots__ = (
        "channel_delay",
        "delay",
        "fifo",
        "last_arrival",
        "loss_rate",
        "n",
        "partition_delays",
        "partitions",
        "retransmits",
        "rng",
        "rto_s",
        "uniform_links",
    )

    def __init__(self, config: SimConfig, rng: random.Random, *, fifo: bool) -> None:
        self.n = config.n
        self.rng = rng
        self.fifo = fifo
        self.delay = Delay.parse(config.delay).sampler(rng)
        self.channel_delay = {
            s * config.n + d: Delay.parse(spec).sampler(rng)
            for (s, d), spec in config.channel_delays.items()
        }
        self.loss_rate = config.loss_rate
        self.rto_s = config.rto_s
        self.partitions = config.partitions
        self.last_arrival: dict[int, float] = {}
        self.retransmits = 0
        self.partition_delays = 0
        #: Every link draws from ``delay`` and nothing makes packets late: one draw per packet.
        self.uniform_links = not (self.channel_delay or self.loss_rate or self.partitions)

    def link_delay(self, src: int, dst: int, now_s: float) -> float:
        """How long a packet sent now on ``src -> dst`` travels (FIFO order not applied)."""
        key = src * self.n + dst
        sampler = self.channel_delay.get(key, self.delay) if self.channel_delay else self.delay
        delay = sampler()
        if self.loss_rate:
            # The reliable layer resends a lost packet after rto_s: it arrives that much later.
            while self.rng.random() < self.loss_rate:
                self.retransmits += 1
                delay += self.rto_s + sampler()
        if self.partitions:
            t = now_s + delay
            for part in self.partitions:
                if part.start_s <= t < part.end_s and ((src in part.group) != (dst in part.group)):
                    self.partition_delays += 1
                    t = part.end_s + sampler()
            delay = t - now_s
        return delay

    def arrival_time(self, src: int, dst: int, now_s: float) -> float:
        """When a packet sent now on ``src -> dst`` arrives, FIFO order applied."""
        # With uniform links, self.delay() is what link_delay returns, without its checks.
        t = now_s + (self.delay() if self.uniform_links else self.link_delay(src, dst, now_s))
        if self.fifo:
            key = src * self.n + dst
            last = self.last_arrival.get(key, 0.0)
            if t < last:
                t = last
            self.last_arrival[key] = t
        return t
