"""Figures that are read, not looked at: no pyplot, labels that never overlap, line styles
that never repeat.

:func:`figure` gives a figure drawn by the Agg backend (no display, no global state);
:func:`freeze_layout` draws it once so that every text has its final place;
:func:`place_labels` then puts each label beside its point at the first offset where it
meets no other text, no other point and stays inside the axes; :func:`styles` gives one
(colour, line style, marker) per line.
"""

import itertools

DPI = 120  # the resolution write_png saves at: positions measured at draw time hold
COLOURS = [f"C{i}" for i in range(10)]  # matplotlib's ten-colour cycle
MARKERS = "osD^vP<X>"  # nine markers: with ten colours, 90 pairs before one repeats
LINESTYLES = ("-", "--", "-.", ":")


def _offsets():
    """Where a label may go, in points from its point, nearest first: right, left, above,
    below, then to either side with a rising vertical shift (joined by a thin line)."""
    found = [(8, 0, "left", "center"), (-8, 0, "right", "center")]
    found += [(0, 8, "center", "bottom"), (0, -8, "center", "top")]
    for dy in (10, 20, 30, 40, 55, 70):
        for sign in (1, -1):
            found += [(18, sign * dy, "left", "center"), (-18, sign * dy, "right", "center")]
    return found


OFFSETS = _offsets()
_BACKGROUND = dict(boxstyle="square,pad=0.1", facecolor="white", edgecolor="none", alpha=0.8)


def figure(width=7.0, height=4.5, layout="constrained"):
    """A matplotlib figure on the Agg canvas, at the resolution it is saved at."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def styles(n):
    """``n`` distinct (colour, line style, marker) triples: colours and markers cycle at
    coprime lengths, the line style changes with each full round of colours."""
    found = []
    for i in range(n):
        style = LINESTYLES[(i // len(COLOURS)) % len(LINESTYLES)]
        found.append((COLOURS[i % len(COLOURS)], style, MARKERS[i % len(MARKERS)]))
    return found


def freeze_layout(fig):
    """Draw ``fig`` once (its layout engine places the axes) and keep that layout, so that
    the boxes measured from now on are where the texts end up. Returns the renderer."""
    fig.canvas.draw()
    fig.set_layout_engine("none")
    for ax in fig.axes:
        ax.set_autoscale_on(False)  # lines drawn later must not move the points
    return fig.canvas.get_renderer()


def text_boxes(fig, renderer=None):
    """``(text, box in pixels)`` of every visible, non-empty text of ``fig``."""
    from matplotlib.text import Text

    renderer = renderer or fig.canvas.get_renderer()
    undrawn = _ticks_out_of_view(fig)
    found = []
    for text in fig.findobj(Text):
        if id(text) in undrawn or text.figure is None:
            continue
        if text.get_visible() and text.get_text().strip():
            found.append((text, text.get_window_extent(renderer)))
    return found


def _ticks_out_of_view(fig):
    """The ids of tick labels that are not drawn, their tick being outside the axis's view."""
    found = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            slack = (high - low) * 1e-9
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if not low - slack <= tick.get_loc() <= high + slack:
                    found.update((id(tick.label1), id(tick.label2)))
    return found


def overlapping(fig):
    """The pairs of texts of ``fig`` whose boxes intersect (their strings)."""
    fig.canvas.draw()
    boxes = text_boxes(fig)
    return [
        (a.get_text(), b.get_text())
        for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2)
        if box_a.overlaps(box_b)
    ]


def thin_ticks(axis, renderer):
    """Hide the tick labels of ``axis`` that would overlap the one before them."""
    last = None
    for label in axis.get_ticklabels():
        if not label.get_visible() or not label.get_text().strip():
            continue
        box = label.get_window_extent(renderer)
        if last is not None and box.overlaps(last):
            label.set_visible(False)
        else:
            last = box


def _point_box(ax, xy, radius):
    from matplotlib.transforms import Bbox

    x, y = ax.transData.transform(xy)
    return Bbox([[x - radius, y - radius], [x + radius, y + radius]])


def place_labels(ax, labels, renderer, fontsize=8, point_radius=5):
    """Annotate each ``(text, (x, y))`` of ``labels`` (data coordinates) at the first of
    :data:`OFFSETS` where its box meets no text already drawn, no other labelled point
    (``point_radius`` points around it) and stays inside the axes; a label set off
    vertically gets a thin line to its point. Call after :func:`freeze_layout`. Returns
    the annotations."""
    fig = ax.figure
    scale = fig.dpi / 72  # points to pixels
    taken = [box for _, box in text_boxes(fig, renderer)]
    points = [_point_box(ax, xy, point_radius * scale) for _, xy in labels]
    inside = ax.get_window_extent(renderer)
    placed = []
    for i, (text, xy) in enumerate(labels):
        obstacles = taken + points[:i] + points[i + 1 :]
        best = None
        for dx, dy, ha, va in OFFSETS:
            note = ax.annotate(
                text, xy, xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                fontsize=fontsize, zorder=4, bbox=_BACKGROUND,
            )  # fmt: skip
            box = note.get_window_extent(renderer)
            clashes = sum(box.overlaps(o) for o in obstacles)
            clashes += 0 if _contains(inside, box) else 1
            if best is None or clashes < best[0]:
                if best is not None:
                    best[1].remove()
                best = (clashes, note, box, dx, dy)
            else:
                note.remove()
            if clashes == 0:
                break
        _, note, box, dx, dy = best
        if dy and dx:  # set off to a side: a line from the point to the label's near edge
            edge = box.x0 if dx > 0 else box.x1
            end = ax.transData.inverted().transform((edge, (box.y0 + box.y1) / 2))
            ax.plot([xy[0], end[0]], [xy[1], end[1]], color="0.6", linewidth=0.6, zorder=2)
        taken.append(box)
        placed.append(note)
    return placed


def _contains(outer, inner):
    x_in = outer.x0 <= inner.x0 and inner.x1 <= outer.x1
    return x_in and outer.y0 <= inner.y0 and inner.y1 <= outer.y1
