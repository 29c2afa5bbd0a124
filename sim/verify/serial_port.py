"""What the testbenches' serial ports share: bytes received from the device, taken by ``recv``
with a timeout in simulated time (:class:`~cnnforge.sim.verify.tb_board.UartModel` on UART pins,
:class:`~cnnforge.sim.verify.usb_host.USBSerialModel` over USB)."""

import cocotb
from cocotb.triggers import Event, First, Timer


__all__ = ["SerialPortModel"]


class SerialPortModel:
    """A port's receive side: a subclass appends the device's bytes to :attr:`received` and
    calls :meth:`_got_bytes`.

    Members
    -------
    received : bytearray
        Bytes from the device not yet taken by :meth:`recv`.
    """

    def __init__(self):
        self.received = bytearray()
        self._byte_event = Event()

    def _got_bytes(self):
        self._byte_event.set()

    def _check(self):
        """Raise what stopped the port (a subclass's), before and while :meth:`recv` waits."""

    async def recv(self, n, timeout_ns):
        """Wait until ``n`` bytes were received or ``timeout_ns`` passed; take and return up
        to ``n`` bytes. Woken by each byte (no polling while the device computes)."""
        deadline = cocotb.simtime.get_sim_time("ns") + timeout_ns
        while len(self.received) < n:
            self._check()
            left = deadline - cocotb.simtime.get_sim_time("ns")
            if left <= 0:
                break
            self._byte_event.clear()
            await First(self._byte_event.wait(), Timer(max(1, round(left)), "ns"))
        data = bytes(self.received[:n])
        del self.received[:n]
        return data

    async def wait(self, ns):
        await Timer(max(1, round(ns)), "ns")

    async def now_ns(self):
        return cocotb.simtime.get_sim_time("ns")
