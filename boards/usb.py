"""The host link over USB: the protocol engine behind a USB full-speed CDC-ACM serial device.

On a board whose USB port goes straight to the FPGA (the OrangeCrab) the host link needs no
adapter: the FPGA is a CDC-ACM device (LUNA's ``USBSerialDevice``, its full-speed PHY in
gateware) and the host sees an ordinary serial port (``/dev/ttyACM0``, ``COM3``) carrying the
same frames as the UART (:mod:`cnnforge.boards.protocol`).

Clock domains: the protocol engine and the accelerator in ``sync``; the USB device in ``usb``
(12 MHz) and its PHY's line sampling in ``usb_io`` (48 MHz, phase-related to ``usb``: both from
one PLL). Bytes cross between ``usb`` and ``sync`` through asynchronous FIFOs.
"""

import operator

from amaranth import *
from amaranth.lib.fifo import AsyncFIFO
from amaranth.lib.wiring import In, Out

from ..errors import CnnforgeError
from .link import EngineTransport, LinkEngine
from .protocol import MAX_ZERO_RUN


__all__ = ["USB_VID", "USB_PID", "USB_CLOCK", "USB_IO_CLOCK", "UTMI_INPUTS", "UTMI_OUTPUTS",
           "check_usb_clocks", "USBLink"]

#: pid.codes' test VID and a PID from its test range (https://pid.codes/1209/): a board in a
#: lab, not a product.
USB_VID, USB_PID = 0x1209, 0x0001

#: The USB device's clock (full speed: one bit per cycle) and its PHY's sampling clock.
USB_CLOCK, USB_IO_CLOCK = 12e6, 48e6

#: UTMI signals a PHY drives (simulation: the host model), with their widths.
UTMI_INPUTS = {"rx_data": 8, "rx_active": 1, "rx_valid": 1, "rx_error": 1, "tx_ready": 1,
               "line_state": 2, "vbus_valid": 1, "session_valid": 1, "session_end": 1,
               "host_disconnect": 1, "id_digital": 1}
#: UTMI signals the device drives.
UTMI_OUTPUTS = {"tx_data": 8, "tx_valid": 1, "xcvr_select": 2, "term_select": 1, "op_mode": 2,
                "suspend": 1, "dp_pulldown": 1, "dm_pulldown": 1}


def check_usb_clocks(f_usb, f_usb_io):
    """:class:`CnnforgeError` unless the PLL's outputs are USB full speed's 12 MHz and four times
    that, within the 0.25 % USB 2.0 allows a full-speed device."""
    for name, f, want in (("usb", f_usb, USB_CLOCK), ("usb_io", f_usb_io, USB_IO_CLOCK)):
        if abs(f - want) > 0.0025 * want:
            raise CnnforgeError(f"USB full speed needs the {name} clock at {want / 1e6:g} MHz "
                                f"+-0.25 %; the PLL gives {f / 1e6:.4f} MHz")


class USBLink(EngineTransport):
    """A :class:`~cnnforge.boards.link.LinkEngine` behind a USB CDC-ACM serial device.

    The device's OUT endpoint buffers packets and NAKs the host while it is full, so the
    engine may make the stream wait as long as it likes: zero runs of any length the protocol
    codes (255) are taken. Replies leave as bulk IN packets: a packet ends (short) whenever the
    bytes queued so far are sent, so a reply never waits for more data to fill 64 bytes.

    Parameters
    ----------
    accel, config, timeout, model_loaded, slots
        As :class:`~cnnforge.boards.link.LinkEngine`.
    bus : platform resource or None
        The board's USB pins (``d_p``, ``d_n``, ``pullup``: LUNA's gateware PHY, clock domains
        ``usb`` and ``usb_io``), or None: the device's UTMI interface is the component's ports
        ``utmi_*`` (simulation at the packet level, without the PHY: domain ``usb`` only).
    fifo_depth : int
        Bytes each way between the ``usb`` and ``sync`` domains.
    byte_cycles : int
        Bytes go to the engine at most one per this many ``sync`` cycles (at least the engine's
        :attr:`~cnnforge.boards.link.LinkEngine.BYTE_CYCLES`; 16 at 72 MHz is 4.5 MB/s, 3.7
        times what the full-speed bus carries).

    Members
    -------
    busy, cls, cls_valid : ``Out``
        The engine's.
    utmi_* :
        With ``bus=None``: the UTMI signals (:data:`UTMI_INPUTS` in, :data:`UTMI_OUTPUTS` out).
    """

    def __init__(self, *, accel, config, timeout, model_loaded=True, slots=2, bus=None,
                 fifo_depth=16, byte_cycles=16):
        self._bus = bus
        self._fifo_depth = operator.index(fifo_depth)
        if self._fifo_depth < 2:
            raise ValueError(f"fifo_depth must be at least 2, not {fifo_depth!r}")
        self._byte_cycles = operator.index(byte_cycles)
        if self._byte_cycles < LinkEngine.BYTE_CYCLES:
            raise ValueError(f"byte_cycles must be at least {LinkEngine.BYTE_CYCLES}, not "
                             f"{byte_cycles!r}")
        #: The protocol engine.
        self.engine = LinkEngine(accel=accel, config=config, timeout=timeout,
                                 max_run=MAX_ZERO_RUN, model_loaded=model_loaded, slots=slots)
        members = dict(self.STATUS)
        if bus is None:
            members.update({f"utmi_{name}": In(width) for name, width in UTMI_INPUTS.items()})
            members.update({f"utmi_{name}": Out(width) for name, width in UTMI_OUTPUTS.items()})
        super().__init__(members)

    def elaborate(self, platform):
        from luna.gateware.interface.utmi import UTMIInterface
        from luna.gateware.usb.devices.acm import USBSerialDevice

        m = Module()
        engine = self._engine(m)

        if self._bus is None:
            bus = UTMIInterface()
            for name in UTMI_INPUTS:
                m.d.comb += getattr(bus, name).eq(getattr(self, f"utmi_{name}"))
            for name in UTMI_OUTPUTS:
                m.d.comb += getattr(self, f"utmi_{name}").eq(getattr(bus, name))
        else:
            bus = self._bus
        serial = USBSerialDevice(bus=bus, idVendor=USB_VID, idProduct=USB_PID,
                                 manufacturer_string="cnnforge",
                                 product_string="cnnforge accelerator")
        m.submodules.serial = serial
        m.d.comb += serial.connect.eq(1)

        # The engine takes a byte at most every `byte_cycles` cycles.
        pace = Signal(range(self._byte_cycles))
        with m.If(engine.i.valid & engine.i.ready):
            m.d.sync += pace.eq(self._byte_cycles - 1)
        with m.Elif(pace != 0):
            m.d.sync += pace.eq(pace - 1)

        depth = self._fifo_depth
        m.submodules.from_host = from_host = AsyncFIFO(width=8, depth=depth,
                                                       w_domain="usb", r_domain="sync")
        m.submodules.to_host = to_host = AsyncFIFO(width=8, depth=depth,
                                                   w_domain="sync", r_domain="usb")
        m.d.comb += [
            from_host.w_data.eq(serial.rx.payload),
            from_host.w_en.eq(serial.rx.valid),
            serial.rx.ready.eq(from_host.w_rdy),
            engine.i.payload.eq(from_host.r_data),
            engine.i.valid.eq(from_host.r_rdy & (pace == 0)),
            from_host.r_en.eq(engine.i.ready & (pace == 0)),

            to_host.w_data.eq(engine.o.payload),
            to_host.w_en.eq(engine.o.valid),
            engine.o.ready.eq(to_host.w_rdy),
            serial.tx.payload.eq(to_host.r_data),
            serial.tx.valid.eq(to_host.r_rdy),
            # A packet ends with the last byte queued: replies go out without waiting for more.
            serial.tx.last.eq(to_host.r_level == 1),
            to_host.r_en.eq(serial.tx.ready),
        ]
        return m
