"""Stream blocks that reshape feature maps between the engines of a layer-list accelerator:
:class:`Border` (zero padding and cropping, generated in the stream) and :class:`Gather` (a
pixel's channel groups into one beat)."""

from amaranth import Cat, Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .util import check_int


__all__ = ["Border", "Gather"]


class Border(wiring.Component):
    """Zero rows/columns around a raster feature map, or rows/columns cut off its bottom/right.

    The input is a ``height`` x ``width`` map in raster order, ``beats`` beats per pixel (a
    pixel's channel groups). The output is the map with ``top``/``left`` zero rows/columns
    before it and ``bottom``/``right`` after it; a negative ``bottom``/``right`` drops that many
    rows/columns instead (those no window of the next engine reaches). Padding beats are
    generated, not stored: a zero beat is offered without taking an input beat, so a padded
    map costs one cycle per padding beat and no memory. Images follow each other with no gap;
    the padding before an image's first pixel is offered as soon as the image before it is
    complete (it needs no input).

    Parameters
    ----------
    shape : shape-like
        Payload of a beat.
    height, width : int
        Input map size in pixels.
    beats : int
        Beats per pixel.
    top, left : int
        Zero rows/columns before the map (>= 0).
    bottom, right : int
        Zero rows/columns after the map, or (negative) rows/columns dropped from it.

    Members
    -------
    i : ``In(stream.Signature(shape))``
    o : ``Out(stream.Signature(shape))``
    """

    def __init__(self, shape, *, height, width, beats=1, top=0, left=0, bottom=0, right=0):
        self._height = check_int("height", height, 1)
        self._width = check_int("width", width, 1)
        self._beats = check_int("beats", beats, 1)
        self._top = check_int("top", top, 0)
        self._left = check_int("left", left, 0)
        self._bottom = check_int("bottom", bottom, -height + 1)
        self._right = check_int("right", right, -width + 1)
        super().__init__({"i": In(stream.Signature(shape)), "o": Out(stream.Signature(shape))})

    @property
    def out_size(self):
        """``(height, width)`` of the output map."""
        return (self._top + self._height + self._bottom, self._left + self._width + self._right)

    @property
    def cycles_per_image(self):
        """Cycles per image at full rate: one per beat of the input or the output grid."""
        rows = self._top + max(self._height, self._height + self._bottom)
        cols = self._left + max(self._width, self._width + self._right)
        return rows * cols * self._beats

    def elaborate(self, platform):
        m = Module()
        h, w, beats = self._height, self._width, self._beats
        top, left = self._top, self._left
        rows = top + max(h, h + self._bottom)
        cols = left + max(w, w + self._right)
        y = Signal(range(rows))
        x = Signal(range(cols))
        b = Signal(range(beats))
        src = Signal()
        dst = Signal()
        m.d.comb += [
            src.eq((y >= top) & (y < top + h) & (x >= left) & (x < left + w)),
            dst.eq((y < top + h + self._bottom) & (x < left + w + self._right)),
        ]
        advance = Signal()
        with m.If(src & dst):
            m.d.comb += [
                self.o.payload.eq(self.i.payload),
                self.o.valid.eq(self.i.valid),
                self.i.ready.eq(self.o.ready),
                advance.eq(self.i.valid & self.o.ready),
            ]
        with m.Elif(src):
            m.d.comb += [self.i.ready.eq(1), advance.eq(self.i.valid)]
        with m.Elif(dst):
            m.d.comb += [self.o.valid.eq(1), advance.eq(self.o.ready)]
        with m.Else():
            m.d.comb += advance.eq(1)
        with m.If(advance):
            m.d.sync += b.eq(b + 1)
            with m.If(b == beats - 1):
                m.d.sync += [b.eq(0), x.eq(x + 1)]
                with m.If(x == cols - 1):
                    m.d.sync += [x.eq(0), y.eq(y + 1)]
                    with m.If(y == rows - 1):
                        m.d.sync += y.eq(0)
        return m


class Gather(wiring.Component):
    """``count`` consecutive beats of ``lanes`` elements as one beat of ``lanes * count``
    (beat 0 in elements ``0 .. lanes - 1``): a pixel's channel groups, as the conv engines and
    the max-pool send them, become one pixel for the next convolution.

    One beat per cycle in and a gathered beat every ``count`` cycles out, with no idle cycle
    while the output is taken as it is offered.

    Members
    -------
    i : ``In(stream.Signature(data.ArrayLayout(element, lanes)))``
    o : ``Out(stream.Signature(data.ArrayLayout(element, lanes * count)))``
    """

    def __init__(self, element, *, lanes, count):
        self._lanes = check_int("lanes", lanes, 1)
        self._count = check_int("count", count, 1)
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(element, lanes))),
            "o": Out(stream.Signature(data.ArrayLayout(element, lanes * count))),
        })

    def elaborate(self, platform):
        m = Module()
        width = self.i.payload.as_value().shape().width
        count = self._count
        if count == 1:
            wiring.connect(m, wiring.flipped(self.i), wiring.flipped(self.o))
            return m
        # Beats shift in at the top: after `count` of them beat 0 is in the lowest elements.
        words = Signal(width * count, reset_less=True)
        k = Signal(range(count))
        m.d.comb += [
            self.o.payload.eq(words),
            self.i.ready.eq(~self.o.valid | self.o.ready),
        ]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [words.eq(Cat(words[width:], self.i.payload)),
                         k.eq(k + 1)]
            with m.If(k == count - 1):
                m.d.sync += [k.eq(0), self.o.valid.eq(1)]
        return m
