"""A packet-level USB full-speed host for cocotb, on a LUNA device's UTMI interface.

:class:`UTMIHost` plays the PHY side of UTMI (it drives ``rx_*`` and ``line_state``, takes the
device's ``tx_*``) and the host controller behind it: SOF every frame, SETUP/control
transfers, bulk OUT and IN transactions with data toggles, :meth:`UTMIHost.enumerate` as an
operating system does it. :class:`USBSerialModel` is a serial port over a CDC-ACM device's
data endpoints with the interface of ``tb_board.UartModel``. The packets (PIDs, CRC5 of
tokens, CRC16 of data) are built and checked here in Python.

Timing
------
Everything happens in the device's 12 MHz ``usb`` domain, one usb clock per bit time, as
LUNA's gateware full-speed PHY presents it: a received byte is one ``rx_valid`` pulse every
8 bit times, a transmitted byte is taken by one ``tx_ready`` pulse every 8 bit times; a
stuffed bit (a 0 after six consecutive 1 data bits, counted from the SYNC's last bit, also
after the CRC) adds one bit time. The host drives and samples on falling clock edges. The
numbers (bit times, USB 2.0 section 7.1.18-19):

* a packet is SYNC (8) + its bytes (8 each) + its stuffed bits + EOP (3: SE0, SE0, J);
  ``rx_active`` rises after the SYNC and falls with the J of the EOP;
* the device's packet starts when it raises ``tx_valid`` (its SYNC); the first byte is taken
  7 bit times later, each next byte 8 (+ stuffed bits) later; a byte time with ``tx_valid``
  low ends the packet and its EOP follows;
* :data:`INTER_PACKET_BITS` = 2: between two host packets (token to DATA, handshake or EOP to
  the next token), the minimum inter-packet delay;
* :data:`TURNAROUND_BITS` = 4: the host's handshake after a device's data packet (the
  responder must answer within 6.5 bit times);
* :data:`RESPONSE_TIMEOUT_BITS` = 18: a device that has not started its answer this long after
  the host's EOP has not answered (the host times out after 16 to 18 bit times);
* :data:`FRAME_BITS` = 12000: SOF every 1 ms with an 11-bit frame number; no transaction
  starts unless its worst case ends :data:`EOF_BITS` = 32 bit times before the next SOF;
* the bulk transactions that put a DATA packet on the bus (OUT, whatever its handshake; IN
  that returned data) take at most ``bulk_frame_bytes`` (default :data:`BULK_FRAME_BYTES` =
  1500) per frame, each its payload and :data:`BULK_OVERHEAD_BYTES` = 13 of protocol: USB 2.0
  section 5.8.4's full-speed bulk limits (table 5-9: 19 transactions of 64 bytes, 71 of 8, 107
  of 1 per frame). A NAKed IN costs only its bus time (~58 bit times).

Idle line state is J. A bus reset is SE0 for ``reset_ms`` (10, TDRST) followed by
``recovery_ms`` (10, TRSTRCY) of SOFs before the first request; SET_ADDRESS is followed by
2 ms (TDSETADDR).
"""

import enum
import struct
from dataclasses import dataclass, field

import cocotb
from amaranth.lib.crc import catalog
from cocotb.triggers import ClockCycles, Event, FallingEdge, First, Lock, RisingEdge, Timer

from .serial_port import SerialPortModel


__all__ = ["PID", "Outcome", "USBError", "USBStall", "USBTimeout", "USBProtocolError",
           "crc5", "crc16", "token_packet", "sof_packet", "data_packet", "handshake_packet",
           "parse_packet", "stuffed_bits", "packet_bits", "Endpoint", "Interface",
           "DeviceInfo", "UTMIHost", "USBSerialModel",
           "SYNC_BITS", "EOP_BITS", "INTER_PACKET_BITS", "TURNAROUND_BITS",
           "RESPONSE_TIMEOUT_BITS", "FRAME_BITS", "EOF_BITS", "BULK_FRAME_BYTES",
           "BULK_OVERHEAD_BYTES"]

SYNC_BITS = 8
EOP_BITS = 3
INTER_PACKET_BITS = 2
TURNAROUND_BITS = 4
RESPONSE_TIMEOUT_BITS = 18
FRAME_BITS = 12_000
EOF_BITS = 32
BULK_FRAME_BYTES = 1500
BULK_OVERHEAD_BYTES = 13

#: UTMI ``line_state`` values at full speed (bit 0 is D+, bit 1 is D-).
LINE_SE0, LINE_J, LINE_K = 0b00, 0b01, 0b10

_CRC5 = catalog.CRC5_USB(data_width=11)
_CRC16 = catalog.CRC16_USB(data_width=8)


class PID(enum.IntEnum):
    """USB packet identifiers (the 4-bit code; :meth:`byte` adds the check bits)."""
    OUT = 0x1
    IN = 0x9
    SOF = 0x5
    SETUP = 0xD
    DATA0 = 0x3
    DATA1 = 0xB
    DATA2 = 0x7
    MDATA = 0xF
    ACK = 0x2
    NAK = 0xA
    STALL = 0xE
    NYET = 0x6
    PRE = 0xC
    SPLIT = 0x8
    PING = 0x4

    def byte(self):
        return self | ((~self & 0xF) << 4)

    @classmethod
    def from_byte(cls, byte):
        if (byte & 0xF) != (~byte >> 4) & 0xF:
            raise ValueError(f"PID byte must carry its inverted check bits, not {byte:#04x}")
        return cls(byte & 0xF)

    @property
    def is_data(self):
        return self in (PID.DATA0, PID.DATA1, PID.DATA2, PID.MDATA)


class Outcome(enum.Enum):
    """How a transaction ended, as the host saw it."""
    ACK = "ack"                  # data accepted (OUT) / data received and ACKed (IN)
    NAK = "nak"
    STALL = "stall"
    TIMEOUT = "timeout"          # no answer within RESPONSE_TIMEOUT_BITS
    CRC_ERROR = "crc_error"      # IN data with a bad CRC16: not ACKed, the device resends
    DUPLICATE = "duplicate"      # IN data with the wrong toggle: ACKed and dropped (8.6.4)
    LOST_ACK = "lost_ack"        # OUT ACKed, taken as not received (bulk_out lose_ack)


class USBError(Exception):
    pass


class USBStall(USBError):
    pass


class USBTimeout(USBError):
    pass


class USBProtocolError(USBError):
    pass


# ---- packets -----------------------------------------------------------------------------------

def crc5(value):
    """CRC5 of the 11 bits of a token (address and endpoint, or frame number)."""
    return _CRC5.compute([value & 0x7FF])


def crc16(data):
    """CRC16 of a data packet's payload."""
    return _CRC16.compute(bytes(data))


def _token(pid, value):
    word = (value & 0x7FF) | (crc5(value) << 11)
    return bytes([PID(pid).byte(), word & 0xFF, word >> 8])


def token_packet(pid, address, endpoint):
    """OUT, IN or SETUP token: PID, 7-bit address, 4-bit endpoint, CRC5 (3 bytes)."""
    if not 0 <= address < 128:
        raise ValueError(f"address must be 0..127, not {address!r}")
    if not 0 <= endpoint < 16:
        raise ValueError(f"endpoint must be 0..15, not {endpoint!r}")
    return _token(pid, address | (endpoint << 7))


def sof_packet(frame):
    return _token(PID.SOF, frame)


def data_packet(pid, payload, corrupt_crc=False):
    """DATA0/DATA1 packet: PID, payload, CRC16 (little-endian); ``corrupt_crc`` flips its
    lowest bit."""
    crc = crc16(payload) ^ int(bool(corrupt_crc))
    return bytes([PID(pid).byte()]) + bytes(payload) + struct.pack("<H", crc)


def handshake_packet(pid):
    return bytes([PID(pid).byte()])


@dataclass
class Packet:
    pid: PID
    payload: bytes = b""          # data packets
    crc_ok: bool = True
    address: int = None           # tokens
    endpoint: int = None
    frame: int = None             # SOF


def parse_packet(data):
    """A packet's bytes (PID first, no SYNC/EOP) as a :class:`Packet`; ValueError when it is
    malformed."""
    if not data:
        raise ValueError("empty packet")
    pid = PID.from_byte(data[0])
    if pid.is_data:
        if len(data) < 3:
            raise ValueError(f"data packet of {len(data)} bytes")
        payload = bytes(data[1:-2])
        return Packet(pid, payload, crc16(payload) == struct.unpack("<H", data[-2:])[0])
    if pid in (PID.ACK, PID.NAK, PID.STALL, PID.NYET):
        if len(data) != 1:
            raise ValueError(f"{pid.name} handshake of {len(data)} bytes")
        return Packet(pid)
    if len(data) != 3:
        raise ValueError(f"{pid.name} token of {len(data)} bytes")
    word = data[1] | (data[2] << 8)
    value = word & 0x7FF
    ok = (word >> 11) == crc5(value)
    if pid == PID.SOF:
        return Packet(pid, crc_ok=ok, frame=value)
    return Packet(pid, crc_ok=ok, address=value & 0x7F, endpoint=value >> 7)


def _stuff(byte, run):
    """Stuffed bits while sending ``byte`` (LSB first) after a run of ``run`` 1 bits; the
    count and the run after it."""
    stuffed = 0
    for i in range(8):
        if (byte >> i) & 1:
            run += 1
            if run == 6:
                stuffed += 1
                run = 0
        else:
            run = 0
    return stuffed, run


def stuffed_bits(packet):
    """Stuffed bits within each byte of ``packet`` (bytes after the SYNC, whose last bit
    starts the run of 1s)."""
    counts, run = [], 1
    for byte in packet:
        count, run = _stuff(byte, run)
        counts.append(count)
    return counts


def packet_bits(packet):
    """Bit times of ``packet`` on the bus: SYNC, bytes, stuffed bits, EOP."""
    return SYNC_BITS + 8 * len(packet) + sum(stuffed_bits(packet)) + EOP_BITS


def _worst_data_bits(max_packet):
    return SYNC_BITS + -(-(max_packet + 3) * 8 * 7 // 6) + EOP_BITS


#: A handshake's bit times, with room for a stuffed bit.
_HANDSHAKE_BITS = SYNC_BITS + 8 + 1 + EOP_BITS


# ---- descriptors -------------------------------------------------------------------------------

@dataclass
class Endpoint:
    address: int
    attributes: int
    max_packet: int
    interval: int

    @property
    def number(self):
        return self.address & 0xF

    @property
    def is_in(self):
        return bool(self.address & 0x80)

    @property
    def kind(self):
        return ("control", "isochronous", "bulk", "interrupt")[self.attributes & 3]


@dataclass
class Interface:
    number: int
    alternate: int
    cls: int
    subclass: int
    protocol: int
    endpoints: list = field(default_factory=list)


@dataclass
class DeviceInfo:
    """What :meth:`UTMIHost.enumerate` found."""
    vid: int
    pid: int
    bcd_usb: int
    bcd_device: int
    device_class: int
    max_packet0: int
    address: int
    configuration: int
    interfaces: list
    manufacturer: str = None
    product: str = None
    serial: str = None
    #: Class requests the device STALLed (accepted, as a host does).
    stalled: list = field(default_factory=list)
    device_descriptor: bytes = b""
    config_descriptor: bytes = b""

    def cdc_data_endpoints(self):
        """``(out endpoint, in endpoint)`` (:class:`Endpoint`) of the first CDC data interface
        (class 0x0A) with a bulk endpoint each way; LookupError when there is none."""
        for interface in self.interfaces:
            if interface.cls != 0x0A:
                continue
            bulk_out = [e for e in interface.endpoints if e.kind == "bulk" and not e.is_in]
            bulk_in = [e for e in interface.endpoints if e.kind == "bulk" and e.is_in]
            if bulk_out and bulk_in:
                return bulk_out[0], bulk_in[0]
        raise LookupError("no CDC data interface with bulk IN and OUT endpoints")


def parse_configuration(data):
    """The interfaces (with their endpoints) of a configuration descriptor set."""
    interfaces, at = [], 0
    while at + 2 <= len(data):
        length, kind = data[at], data[at + 1]
        if length < 2:
            raise USBProtocolError(f"descriptor of length {length} at byte {at}")
        body = data[at:at + length]
        if kind == 4:
            interfaces.append(Interface(*body[2:4], *body[5:8]))
        elif kind == 5:
            if not interfaces:
                raise USBProtocolError("endpoint descriptor before any interface")
            interfaces[-1].endpoints.append(
                Endpoint(body[2], body[3], body[4] | (body[5] << 8), body[6]))
        at += length
    return interfaces


# ---- the host ----------------------------------------------------------------------------------

GET_DESCRIPTOR, SET_ADDRESS, SET_CONFIGURATION = 6, 5, 9
SET_LINE_CODING, SET_CONTROL_LINE_STATE = 0x20, 0x22


class UTMIHost:
    """A USB full-speed host controller and its PHY, on a device's UTMI port (see module doc
    for the timing).

    Parameters
    ----------
    dut : the cocotb top; the UTMI signals are ``dut.<prefix><name>``.
    clock : the device's 12 MHz ``usb`` clock (one bit time per cycle).
    prefix : str
        Name prefix of the UTMI signals (``rx_data``, ``rx_valid``, ``rx_active``, ``rx_error``,
        ``line_state``, ``tx_data``, ``tx_valid``, ``tx_ready``; ``vbus_valid``,
        ``session_valid``, ``session_end``, ``host_disconnect``, ``id_digital`` when present).
    bulk_frame_bytes : int
        Bytes of bulk transactions with a DATA packet per frame, each its payload and
        :data:`BULK_OVERHEAD_BYTES` (USB 2.0's full-speed bulk limits).

    Members
    -------
    address : the device address used by transactions (0 until :meth:`enumerate` sets it).
    max_packet0 : endpoint 0's max packet size (8 until the device descriptor tells).
    frame : the last SOF's frame number.
    stats : dict of counters: ``host_packets``, ``device_packets``, ``host_bits``,
        ``device_bits`` (bit times of their packets on the bus), ``sofs``, ``late_sofs``,
        ``timeouts``, ``busiest_frame`` (most bulk transactions with data in one frame).
    last_transaction_bits : bit times of the packets of the last transaction.
    """

    def __init__(self, dut, clock, *, prefix="utmi_", bulk_frame_bytes=BULK_FRAME_BYTES):
        self._clock = clock

        def signal(name):
            return getattr(dut, prefix + name)

        self._rx_data = signal("rx_data")
        self._rx_valid = signal("rx_valid")
        self._rx_active = signal("rx_active")
        self._rx_error = signal("rx_error")
        self._line_state = signal("line_state")
        self._tx_data = signal("tx_data")
        self._tx_valid = signal("tx_valid")
        self._tx_ready = signal("tx_ready")
        self._static = {}
        for name, value in (("vbus_valid", 1), ("session_valid", 1), ("session_end", 0),
                            ("host_disconnect", 0), ("id_digital", 1)):
            if hasattr(dut, prefix + name):
                self._static[name] = (signal(name), value)
        self.bulk_frame_bytes = bulk_frame_bytes
        self.address = 0
        self.max_packet0 = 8
        self.frame = 0
        self.stats = dict(host_packets=0, device_packets=0, host_bits=0, device_bits=0,
                          sofs=0, late_sofs=0, timeouts=0, busiest_frame=0)
        self.last_transaction_bits = 0
        self._toggles = {}
        self._lock = Lock()
        self._new_frame = Event()
        self._frame_bulk = 0
        self._frame_bytes = 0
        self._next_sof = None
        self._period_ps = None
        self._t0 = 0
        self._sof_task = None
        self._idle()

    # -- time --

    def _cycle(self):
        return round((cocotb.simtime.get_sim_time("ps") - self._t0) / self._period_ps)

    async def _cycles(self, n):
        """Wait ``n`` >= 1 bit times (falling edge to falling edge)."""
        await ClockCycles(self._clock, n, FallingEdge)

    def now_ns(self):
        """Simulated time in ns."""
        return cocotb.simtime.get_sim_time("ns")

    async def wait_frames(self, n):
        """Wait for the next ``n`` SOFs (after the current frame's)."""
        for _ in range(n):
            await self._new_frame.wait()

    # -- line --

    def _idle(self):
        for handle, value in self._static.values():
            handle.value = value
        self._rx_data.value = 0
        self._rx_valid.value = 0
        self._rx_active.value = 0
        self._rx_error.value = 0
        self._tx_ready.value = 0
        self._line_state.value = LINE_J

    async def start(self, *, reset_ms=10):
        """Attach: idle J, measure the clock, drive a bus reset of ``reset_ms``, then start
        the frames (SOF every 1 ms)."""
        self._idle()
        await FallingEdge(self._clock)
        start = cocotb.simtime.get_sim_time("ps")
        await FallingEdge(self._clock)
        self._period_ps = cocotb.simtime.get_sim_time("ps") - start
        self._t0 = cocotb.simtime.get_sim_time("ps")
        await self.reset(reset_ms)

    async def reset(self, ms=10):
        """Bus reset: SE0 for ``ms`` (no SOFs meanwhile); the device is back at address 0 and
        every data toggle at DATA0."""
        async with self._lock:
            if self._sof_task is not None:
                self._sof_task.cancel()
            self._line_state.value = LINE_SE0
            await self._cycles(round(ms * FRAME_BITS))
            self._line_state.value = LINE_J
            self.address = 0
            self.max_packet0 = 8
            self._toggles.clear()
            await self._cycles(INTER_PACKET_BITS)
        self._next_sof = self._cycle() + 1
        self._sof_task = cocotb.start_soon(self._frames())
        await self._new_frame.wait()

    async def _frames(self):
        while True:
            wait = self._next_sof - self._cycle()
            if wait > 0:
                await self._cycles(wait)
            async with self._lock:
                if self._cycle() > self._next_sof:
                    self.stats["late_sofs"] += 1
                self.frame = (self.frame + 1) & 0x7FF
                await self._send(sof_packet(self.frame))
                await self._cycles(INTER_PACKET_BITS)
                self.stats["sofs"] += 1
            self.stats["busiest_frame"] = max(self.stats["busiest_frame"], self._frame_bulk)
            self._frame_bulk = 0
            self._frame_bytes = 0
            self._next_sof += FRAME_BITS
            event, self._new_frame = self._new_frame, Event()
            event.set()

    async def _claim(self, bits, bulk_bytes=0):
        """Own the bus for a transaction of at most ``bits`` bit times: it must end before the
        frame's EOF; a bulk transaction of up to ``bulk_bytes`` (payload and overhead) must
        also fit the frame's bulk budget."""
        while True:
            await self._lock.acquire()
            fits = self._cycle() + bits <= self._next_sof - EOF_BITS
            if fits and self._frame_bytes + bulk_bytes <= self.bulk_frame_bytes:
                return
            event = self._new_frame
            self._lock.release()
            await event.wait()

    # -- packets --

    async def _send(self, packet):
        """Send ``packet`` (PID first) through the receive side; returns after its EOP."""
        if self._tx_valid.value:
            raise USBProtocolError("the device transmits while the host sends")
        self._line_state.value = LINE_K
        await self._cycles(SYNC_BITS)
        self._rx_active.value = 1
        for byte, stuffed in zip(packet, stuffed_bits(packet)):
            await self._cycles(7 + stuffed)
            self._rx_data.value = byte
            self._rx_valid.value = 1
            await self._cycles(1)
            self._rx_valid.value = 0
        self._line_state.value = LINE_SE0
        await self._cycles(2)
        self._rx_active.value = 0
        self._line_state.value = LINE_J
        await self._cycles(1)
        bits = packet_bits(packet)
        self.stats["host_packets"] += 1
        self.stats["host_bits"] += bits
        self.last_transaction_bits += bits

    async def _receive(self, timeout_bits=RESPONSE_TIMEOUT_BITS):
        """The device's next packet (bytes, PID first), or None when it does not start one
        within ``timeout_bits``; returns after its EOP."""
        if not self._tx_valid.value:
            edge = RisingEdge(self._tx_valid)
            fired = await First(edge, ClockCycles(self._clock, timeout_bits, FallingEdge))
            if fired is not edge:
                self.stats["timeouts"] += 1
                return None
            await FallingEdge(self._clock)
        self._line_state.value = LINE_K
        await self._cycles(SYNC_BITS - 1)
        data, run, bits = bytearray(), 1, SYNC_BITS + EOP_BITS
        while self._tx_valid.value:
            data.append(int(self._tx_data.value))
            self._tx_ready.value = 1
            await self._cycles(1)
            self._tx_ready.value = 0
            stuffed, run = _stuff(data[-1], run)
            bits += 8 + stuffed
            await self._cycles(7 + stuffed)
        self._line_state.value = LINE_SE0
        await self._cycles(2)
        self._line_state.value = LINE_J
        await self._cycles(1)
        if not data:
            raise USBProtocolError("the device raised tx_valid and dropped it before a byte")
        self.stats["device_packets"] += 1
        self.stats["device_bits"] += bits
        self.last_transaction_bits += bits
        return bytes(data)

    async def _handshake(self):
        """The device's handshake after a host DATA packet: a PID, or None on timeout."""
        reply = await self._receive()
        if reply is None:
            return None
        packet = parse_packet(reply)
        if packet.pid not in (PID.ACK, PID.NAK, PID.STALL, PID.NYET):
            raise USBProtocolError(f"expected a handshake, the device sent {packet.pid.name}")
        return packet.pid

    # -- transactions --

    async def out_transaction(self, endpoint, data_pid, payload, *, token=PID.OUT,
                              address=None, corrupt_crc=False, bulk=False):
        """Token (OUT or SETUP), DATA packet, the device's handshake: its PID or None (no
        answer). ``bulk``: counts against the frame's bulk transactions."""
        address = self.address if address is None else address
        token_bytes = token_packet(token, address, endpoint)
        data = data_packet(data_pid, payload, corrupt_crc)
        bits = (packet_bits(token_bytes) + INTER_PACKET_BITS + packet_bits(data)
                + RESPONSE_TIMEOUT_BITS + _HANDSHAKE_BITS + INTER_PACKET_BITS)
        await self._claim(bits, len(payload) + BULK_OVERHEAD_BYTES if bulk else 0)
        self.last_transaction_bits = 0
        try:
            if bulk:
                self._frame_bulk += 1
                self._frame_bytes += len(payload) + BULK_OVERHEAD_BYTES
            await self._send(token_bytes)
            await self._cycles(INTER_PACKET_BITS)
            await self._send(data)
            reply = await self._handshake()
            await self._cycles(INTER_PACKET_BITS)
        finally:
            self._lock.release()
        return reply

    async def in_transaction(self, endpoint, *, address=None, max_packet=64, bulk=False):
        """IN token; the device's answer: ``(PID.DATA0/1, payload, crc_ok)`` (the host ACKs
        data with a good CRC), ``(PID.NAK/STALL, None, True)`` or ``(None, None, True)`` (no
        answer). ``bulk``: a data answer counts against the frame's bulk transactions."""
        address = self.address if address is None else address
        token_bytes = token_packet(PID.IN, address, endpoint)
        bits = (packet_bits(token_bytes) + RESPONSE_TIMEOUT_BITS + _worst_data_bits(max_packet)
                + TURNAROUND_BITS + _HANDSHAKE_BITS + INTER_PACKET_BITS)
        await self._claim(bits, max_packet + BULK_OVERHEAD_BYTES if bulk else 0)
        self.last_transaction_bits = 0
        try:
            await self._send(token_bytes)
            reply = await self._receive()
            if reply is None:
                await self._cycles(INTER_PACKET_BITS)
                return None, None, True
            packet = parse_packet(reply)
            if packet.pid.is_data:
                if len(packet.payload) > max_packet:
                    raise USBProtocolError(f"IN data of {len(packet.payload)} bytes, more than "
                                           f"the endpoint's {max_packet}")
                if bulk:
                    self._frame_bulk += 1
                    self._frame_bytes += len(packet.payload) + BULK_OVERHEAD_BYTES
                if packet.crc_ok:
                    await self._cycles(TURNAROUND_BITS)
                    await self._send(handshake_packet(PID.ACK))
                await self._cycles(INTER_PACKET_BITS)
                return packet.pid, packet.payload, packet.crc_ok
            if packet.pid not in (PID.NAK, PID.STALL):
                raise USBProtocolError(f"IN answered with {packet.pid.name}")
            await self._cycles(INTER_PACKET_BITS)
            return packet.pid, None, True
        finally:
            self._lock.release()

    def _toggle_pid(self, key):
        return PID.DATA1 if self._toggles.get(key, 0) else PID.DATA0

    async def bulk_out(self, endpoint, payload, *, corrupt_crc=False, lose_ack=False):
        """One bulk OUT transaction of ``payload`` (<= max packet) with the endpoint's data
        toggle, which advances on ACK. Returns the :class:`Outcome` (ACK, NAK, STALL,
        TIMEOUT). ``corrupt_crc``: send a wrong CRC16; ``lose_ack``: an ACK counts as not
        received (LOST_ACK, the toggle stays: the same data must go again)."""
        key = (self.address, endpoint, "out")
        reply = await self.out_transaction(endpoint, self._toggle_pid(key), payload,
                                           corrupt_crc=corrupt_crc, bulk=True)
        if reply is None:
            return Outcome.TIMEOUT
        if reply == PID.ACK and lose_ack:
            return Outcome.LOST_ACK
        if reply == PID.ACK:
            self._toggles[key] = self._toggles.get(key, 0) ^ 1
            return Outcome.ACK
        if reply == PID.NAK:
            return Outcome.NAK
        if reply == PID.STALL:
            return Outcome.STALL
        raise USBProtocolError(f"bulk OUT answered with {reply.name}")

    async def bulk_in(self, endpoint, *, max_packet=64):
        """One bulk IN transaction: ``(Outcome, payload)``; ACK with the payload when the
        data carried the expected toggle (which then advances), DUPLICATE when it did not
        (ACKed, dropped), CRC_ERROR (not ACKed), NAK, STALL, TIMEOUT with None."""
        key = (self.address, endpoint, "in")
        pid, payload, crc_ok = await self.in_transaction(endpoint, max_packet=max_packet,
                                                         bulk=True)
        if pid is None:
            return Outcome.TIMEOUT, None
        if pid == PID.NAK:
            return Outcome.NAK, None
        if pid == PID.STALL:
            return Outcome.STALL, None
        if not crc_ok:
            return Outcome.CRC_ERROR, None
        if pid != self._toggle_pid(key):
            return Outcome.DUPLICATE, None
        self._toggles[key] = self._toggles.get(key, 0) ^ 1
        return Outcome.ACK, payload

    # -- control transfers --

    async def _retry(self, what, transaction, deadline_bits, tries=3):
        """Repeat ``transaction()`` while the device NAKs (until ``deadline_bits`` pass) or
        does not answer (``tries`` times); its final reply."""
        deadline = self._cycle() + deadline_bits
        timeouts = 0
        while True:
            reply = await transaction()
            pid = reply[0] if isinstance(reply, tuple) else reply
            if pid is None:
                timeouts += 1
                if timeouts >= tries:
                    raise USBTimeout(f"{what}: no answer {tries} times")
                continue
            if pid == PID.STALL:
                raise USBStall(f"{what}: STALL")
            if pid != PID.NAK:
                return reply
            if self._cycle() > deadline:
                raise USBTimeout(f"{what}: NAKed for {deadline_bits} bit times")

    async def _setup(self, request_type, request, value, index, length, what, deadline):
        setup = struct.pack("<BBHHH", request_type, request, value, index, length)
        reply = await self._retry(what + " SETUP", lambda: self.out_transaction(
            0, PID.DATA0, setup, token=PID.SETUP), deadline)
        if reply != PID.ACK:
            raise USBProtocolError(f"{what}: SETUP answered with {reply.name}")

    async def control_in(self, request_type, request, value, index, length, *,
                         timeout_ms=50):
        """A control read: SETUP, IN data stage (DATA1 first, up to ``length`` bytes or a
        short packet), OUT status stage; returns the data. NAKs are retried for up to
        ``timeout_ms``, an unanswered transaction 3 times.

        Raises
        ------
        USBStall : the device stalled a stage.
        USBTimeout : NAKed for ``timeout_ms`` or unanswered 3 times.
        USBProtocolError : an answer the stage does not allow."""
        what = f"request {request:#04x}"
        deadline = timeout_ms * FRAME_BITS
        await self._setup(request_type | 0x80, request, value, index, length, what, deadline)
        data, toggle = bytearray(), PID.DATA1
        while len(data) < length:
            pid, payload, crc_ok = await self._retry(what + " data", lambda: self.in_transaction(
                0, max_packet=self.max_packet0), deadline)
            if not crc_ok:
                continue
            if pid != toggle:
                continue                       # a repeated packet (our ACK was lost): dropped
            data += payload
            toggle = PID.DATA0 if toggle == PID.DATA1 else PID.DATA1
            if len(payload) < self.max_packet0:
                break
        reply = await self._retry(what + " status", lambda: self.out_transaction(
            0, PID.DATA1, b""), deadline)
        if reply != PID.ACK:
            raise USBProtocolError(f"{what}: status stage answered with {reply.name}")
        return bytes(data)

    async def control_out(self, request_type, request, value, index, data=b"", *,
                          timeout_ms=50):
        """A control write: SETUP, OUT data stage (DATA1 first), IN status stage (a DATA1
        ZLP); retries and errors as :meth:`control_in`."""
        what = f"request {request:#04x}"
        deadline = timeout_ms * FRAME_BITS
        await self._setup(request_type & 0x7F, request, value, index, len(data), what,
                          deadline)
        toggle = PID.DATA1
        for at in range(0, len(data), self.max_packet0):
            chunk = data[at:at + self.max_packet0]
            reply = await self._retry(what + " data", lambda: self.out_transaction(
                0, toggle, chunk), deadline)
            if reply != PID.ACK:
                raise USBProtocolError(f"{what}: data stage answered with {reply.name}")
            toggle = PID.DATA0 if toggle == PID.DATA1 else PID.DATA1
        while True:
            pid, payload, crc_ok = await self._retry(what + " status", lambda: self.in_transaction(
                0, max_packet=self.max_packet0), deadline)
            if crc_ok:
                break
        if pid != PID.DATA1 or payload:
            raise USBProtocolError(f"{what}: status stage sent {pid.name} with "
                                   f"{len(payload)} bytes, not a DATA1 ZLP")

    async def get_descriptor(self, kind, index, length, language=0):
        return await self.control_in(0x80, GET_DESCRIPTOR, (kind << 8) | index, language,
                                     length)

    async def get_string(self, index, language):
        data = await self.get_descriptor(3, index, 255, language)
        if len(data) < 2 or data[1] != 3:
            raise USBProtocolError(f"string descriptor {index}: {data.hex()}")
        return data[2:data[0]].decode("utf-16-le")

    async def enumerate(self, *, address=5, configuration=1, recovery_ms=10,
                        line_coding=(115200, 0, 0, 8), control_line_state=0x0003):
        """Enumerate as an operating system does: GET_DESCRIPTOR device (8 bytes, then 18),
        SET_ADDRESS ``address``, GET_DESCRIPTOR configuration (9 bytes, then wTotalLength),
        the strings, SET_CONFIGURATION ``configuration``; then to each CDC-ACM control
        interface SET_LINE_CODING (``(baud, stop bits, parity, data bits)``) and
        SET_CONTROL_LINE_STATE (DTR|RTS), either of which a device may STALL (recorded in
        :attr:`DeviceInfo.stalled`). Waits ``recovery_ms`` after the reset first."""
        if not 0 < address < 128:
            raise ValueError(f"address must be 1..127, not {address!r}")
        await self.wait_frames(recovery_ms)
        head = await self.get_descriptor(1, 0, 8)
        if len(head) != 8 or head[1] != 1:
            raise USBProtocolError(f"device descriptor head: {head.hex()}")
        self.max_packet0 = head[7]
        await self.control_out(0x00, SET_ADDRESS, address, 0)
        self.address = address
        await self.wait_frames(2)
        device = await self.get_descriptor(1, 0, 18)
        if len(device) != 18:
            raise USBProtocolError(f"device descriptor of {len(device)} bytes")
        (_, _, bcd_usb, device_class, _, _, max_packet0, vid, pid, bcd_device,
         i_manufacturer, i_product, i_serial, _) = struct.unpack("<BBHBBBBHHHBBBB", device)
        config_head = await self.get_descriptor(2, 0, 9)
        total = struct.unpack("<H", config_head[2:4])[0]
        config = await self.get_descriptor(2, 0, total)
        if len(config) != total:
            raise USBProtocolError(f"configuration of {len(config)} bytes, not {total}")
        info = DeviceInfo(vid, pid, bcd_usb, bcd_device, device_class, max_packet0, address,
                          configuration, parse_configuration(config), device_descriptor=device,
                          config_descriptor=config)
        if i_manufacturer or i_product or i_serial:
            languages = await self.get_descriptor(3, 0, 255)
            language = struct.unpack("<H", languages[2:4])[0] if len(languages) >= 4 else 0
            for name, index in (("manufacturer", i_manufacturer), ("product", i_product),
                                ("serial", i_serial)):
                if index:
                    setattr(info, name, await self.get_string(index, language))
        await self.control_out(0x00, SET_CONFIGURATION, configuration, 0)
        for interface in info.interfaces:
            if (interface.cls, interface.subclass) != (0x02, 0x02):
                continue
            requests = (("SET_LINE_CODING", SET_LINE_CODING, 0,
                         struct.pack("<IBBB", *line_coding)),
                        ("SET_CONTROL_LINE_STATE", SET_CONTROL_LINE_STATE,
                         control_line_state, b""))
            for name, request, value, data in requests:
                try:
                    await self.control_out(0x21, request, value, interface.number, data)
                except USBStall:
                    info.stalled.append(name)
        return info


# ---- a serial port over CDC-ACM ------------------------------------------------------------------

class USBSerialModel(SerialPortModel):
    """A serial port over a CDC-ACM device's bulk data endpoints, with the interface of
    ``tb_board.UartModel`` (``send``, ``recv``, ``wait``, ``now_ns``, ``received``).

    One scheduler coroutine owns this port's share of the bus: it alternates bulk OUT
    transactions (while bytes are queued) and bulk IN transactions (while reading is not
    paused: an outstanding read of a host's serial driver, re-issued as soon as the device
    NAKs), never two at once. OUT packets carry up to ``max_packet`` bytes of the queue (a
    shorter one ends a transfer; no ZLP after a transfer that ends on a full packet, as
    Linux's cdc-acm); a NAKed or unanswered OUT is retried with the same toggle, a STALL or
    ``max_timeouts`` unanswered transactions in a row stop the port (USBError).

    Parameters
    ----------
    host : UTMIHost (enumerated)
    ep_out, ep_in : int or Endpoint
        The CDC data endpoints (numbers).
    max_packet : int
        The endpoints' wMaxPacketSize.

    Members
    -------
    received : bytearray
        Bytes read from the device and not yet taken by :meth:`recv`.
    counters : dict
        ``out_packets`` (ACKed), ``out_bytes``, ``out_naks``, ``out_timeouts``,
        ``out_lost_acks``, ``out_bits`` (bit times of every OUT transaction's packets);
        ``in_packets`` (with data), ``in_zlps``, ``in_bytes``, ``in_naks``, ``in_timeouts``,
        ``in_crc_errors``, ``in_duplicates``, ``in_bits``. SOFs and gaps are in neither:
        ``host.stats`` has the whole bus.
    """

    def __init__(self, host, ep_out, ep_in, *, max_packet=64, max_timeouts=3):
        self.host = host
        self._ep_out = getattr(ep_out, "number", ep_out)
        self._ep_in = getattr(ep_in, "number", ep_in)
        self.max_packet = max_packet
        self.max_timeouts = max_timeouts
        super().__init__()
        self.counters = dict(out_packets=0, out_bytes=0, out_naks=0, out_timeouts=0,
                             out_lost_acks=0, out_bits=0, in_packets=0, in_zlps=0, in_bytes=0,
                             in_naks=0, in_timeouts=0, in_crc_errors=0, in_duplicates=0,
                             in_bits=0)
        self.error = None
        self._queue = bytearray()
        self._queued = 0              # bytes ever queued
        self._accepted = 0            # ... and ACKed by the device
        self._corrupt = 0
        self._lose_acks = 0
        self._read_resume_ns = 0
        self._timeouts = 0
        self._work = Event()
        self._accepted_event = Event()
        self._task = cocotb.start_soon(self._scheduler())

    # -- the UartModel interface --

    async def send(self, data):
        """Queue ``data``; returns once the device has ACKed all of it."""
        self._check()
        self._queue += data
        self._queued += len(data)
        target = self._queued
        self._work.set()
        while self._accepted < target:
            self._accepted_event.clear()
            await self._accepted_event.wait()
            self._check()

    # -- host behaviour --

    def pause_reading(self, ns):
        """Issue no IN tokens for ``ns`` from now (a host that stops reading); writing goes
        on."""
        self._read_resume_ns = cocotb.simtime.get_sim_time("ns") + ns

    def resume_reading(self):
        self._read_resume_ns = 0
        self._work.set()

    def corrupt_next_out(self, count=1):
        """Send the next ``count`` OUT data packets with a wrong CRC16 (each is retried)."""
        self._corrupt += count

    def lose_next_ack(self, count=1):
        """Act as if the device's next ``count`` OUT ACKs were lost: resend the packet with
        the same toggle (the device must ACK and drop it)."""
        self._lose_acks += count

    @property
    def pending(self):
        """Bytes queued and not yet ACKed."""
        return len(self._queue)

    def _check(self):
        if self.error is not None:
            raise self.error

    def _reading(self):
        return cocotb.simtime.get_sim_time("ns") >= self._read_resume_ns

    def _fail(self, error):
        self.error = error
        self._accepted_event.set()
        self._got_bytes()
        raise error

    async def _scheduler(self):
        out_turn = True
        while True:
            can_out, can_in = bool(self._queue), self._reading()
            if not (can_out or can_in):
                self._work.clear()
                left = self._read_resume_ns - cocotb.simtime.get_sim_time("ns")
                await First(self._work.wait(), Timer(max(1, round(left)), "ns"))
                continue
            if can_out and (out_turn or not can_in):
                await self._out()
            else:
                await self._in()
            out_turn = not out_turn

    def _timeout(self, name):
        self.counters[name] += 1
        self._timeouts += 1
        if self._timeouts >= self.max_timeouts:
            self._fail(USBTimeout(f"endpoint unanswered {self._timeouts} times in a row"))

    async def _out(self):
        packet = bytes(self._queue[:self.max_packet])
        corrupt = self._corrupt > 0
        self._corrupt -= corrupt
        outcome = await self.host.bulk_out(self._ep_out, packet, corrupt_crc=corrupt,
                                           lose_ack=self._lose_acks > 0)
        self.counters["out_bits"] += self.host.last_transaction_bits
        if outcome == Outcome.LOST_ACK:
            self._lose_acks -= 1
            self.counters["out_lost_acks"] += 1
            return
        if outcome == Outcome.ACK:
            self._timeouts = 0
            del self._queue[:len(packet)]
            self._accepted += len(packet)
            self.counters["out_packets"] += 1
            self.counters["out_bytes"] += len(packet)
            self._accepted_event.set()
        elif outcome == Outcome.NAK:
            self._timeouts = 0
            self.counters["out_naks"] += 1
        elif outcome == Outcome.TIMEOUT:
            self._timeout("out_timeouts")
        else:
            self._fail(USBStall(f"bulk OUT endpoint {self._ep_out} stalled"))

    async def _in(self):
        outcome, payload = await self.host.bulk_in(self._ep_in, max_packet=self.max_packet)
        self.counters["in_bits"] += self.host.last_transaction_bits
        if outcome == Outcome.TIMEOUT:
            self._timeout("in_timeouts")
            return
        self._timeouts = 0
        if outcome == Outcome.ACK:
            if payload:
                self.counters["in_packets"] += 1
                self.counters["in_bytes"] += len(payload)
                self.received += payload
                self._got_bytes()
            else:
                self.counters["in_zlps"] += 1
        elif outcome == Outcome.NAK:
            self.counters["in_naks"] += 1
        elif outcome == Outcome.CRC_ERROR:
            self.counters["in_crc_errors"] += 1
        elif outcome == Outcome.DUPLICATE:
            self.counters["in_duplicates"] += 1
        else:
            self._fail(USBStall(f"bulk IN endpoint {self._ep_in} stalled"))
