"""A sparsity slider: keyboard first, mouse as well. Textual has none, so this is one line of bar plus
the value in percent."""

from __future__ import annotations

import math

from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget

from workbench.app.edits import SliderKey
from workbench.app.format import MAX_PERCENT

VALUE_WIDTH = 7  # " 50.0%"


class Slider(Widget, can_focus=True):
    """A value in [0, `maximum`] shown as a bar. `key` says what it controls (the app decides what a change
    means). Changes made by the user post `Slider.Changed`; `set_value` from code posts nothing. A locked
    slider shows its value but refuses changes and posts `Slider.Refused` instead. To type a value it posts
    `Slider.ValueWanted`; whoever asks the user hands the answer to `typed`."""

    BINDINGS = [
        Binding("left", "nudge(-1)", "-1 point", id="slider.decrease", show=False),
        Binding("right", "nudge(1)", "+1 point", id="slider.increase", show=False),
        Binding("shift+left,pageup", "nudge(-5)", "-5 points", id="slider.decrease_big", show=False),
        Binding("shift+right,pagedown", "nudge(5)", "+5 points", id="slider.increase_big", show=False),
        Binding("home", "extreme(0)", "0%", id="slider.minimum", show=False),
        Binding("end", "extreme(1)", "maximum", id="slider.maximum", show=False),
        Binding("up,k", "move(-1)", "Previous slider", id="slider.previous", show=False),
        Binding("down,j", "move(1)", "Next slider", id="slider.next", show=False),
        Binding("e,equals_sign", "type_value", "Type a value", id="slider.type_value", show=False),
        Binding("backspace,delete", "reset", "Back to allocation", id="slider.reset", show=False),
    ]

    COMPONENT_CLASSES = {"slider--filled", "slider--thumb", "slider--empty", "slider--value"}

    DEFAULT_CSS = """
    Slider {
        height: 1;
        width: 1fr;
        min-width: 12;
    }
    Slider > .slider--filled { color: $primary; }
    Slider > .slider--thumb { color: $accent; text-style: bold; }
    Slider > .slider--empty { color: $foreground 30%; }
    Slider > .slider--value { color: $foreground; }
    Slider:focus { background: $primary 25%; }
    Slider:focus > .slider--value { text-style: bold; }
    Slider.-locked > .slider--filled { color: $foreground 45%; }
    Slider.-locked > .slider--thumb { color: $foreground 45%; }
    Slider.-overridden > .slider--value { color: $accent; }
    """

    value: reactive[float] = reactive(0.0)
    locked: reactive[bool] = reactive(False)

    class Changed(Message):
        """The user moved the slider."""

        def __init__(self, slider: "Slider", value: float):
            super().__init__()
            self.slider = slider
            self.value = value

        @property
        def control(self) -> "Slider":
            return self.slider

    class Reset(Message):
        """The user asked to drop this slider's manual value."""

        def __init__(self, slider: "Slider"):
            super().__init__()
            self.slider = slider

        @property
        def control(self) -> "Slider":
            return self.slider

    class ValueWanted(Message):
        """The user wants to type an exact value (in percent)."""

        def __init__(self, slider: "Slider"):
            super().__init__()
            self.slider = slider

    class Refused(Message):
        """The user tried to move a locked slider."""

        def __init__(self, slider: "Slider"):
            super().__init__()
            self.slider = slider

    def __init__(self, key: SliderKey, value: float = 0.0, maximum: float = MAX_PERCENT / 100, label: str = "",
                 *, id: str | None = None, classes: str | None = None):
        super().__init__(id=id, classes=classes)
        self.key = key
        self.maximum = maximum
        self.label = label
        self._dragging = False
        self.set_reactive(Slider.value, value)

    # ----- values ---------------------------------------------------------------------------------
    def _clamp(self, value: float) -> float:
        return round(min(max(value, 0.0), self.maximum), 6)

    def set_value(self, value: float) -> None:
        """Show `value` without posting a change."""
        self.value = self._clamp(value)

    def _user_set(self, value: float) -> None:
        if self.locked:
            self.post_message(self.Refused(self))
            return
        value = self._clamp(value)
        if value != self.value:
            self.value = value
            self.post_message(self.Changed(self, value))

    def watch_locked(self, locked: bool) -> None:
        self.set_class(locked, "-locked")

    # ----- keyboard -------------------------------------------------------------------------------
    def action_nudge(self, points: int) -> None:
        """Move by whole percentage points (from an in-between value, the first step lands on a whole one)."""
        percent = 100 * self.value
        start = math.floor(percent + 1e-6) if points > 0 else math.ceil(percent - 1e-6)
        self._user_set((start + points) / 100)

    def action_move(self, delta: int) -> None:
        """Focus the previous or next visible slider (no wrap-around). Focus moves at once, not later as
        with `focus()`, so fast key repeat over a slow link moves one slider per key."""
        screen = self.screen
        current = screen.focused if isinstance(screen.focused, Slider) else self
        sliders = [w for w in screen.focus_chain if isinstance(w, Slider)]
        if current not in sliders:
            return
        index = sliders.index(current) + delta
        if 0 <= index < len(sliders):
            screen.set_focus(sliders[index])

    def action_extreme(self, end: int) -> None:
        self._user_set(self.maximum if end else 0.0)

    def action_type_value(self) -> None:
        """Ask for an exact value in percent."""
        if self.locked:
            self.post_message(self.Refused(self))
            return
        self.post_message(self.ValueWanted(self))

    def typed(self, value: float | None) -> None:
        """The value the user typed (None: nothing)."""
        if value is not None:
            self._user_set(value)

    def action_reset(self) -> None:
        if self.locked:
            self.post_message(self.Refused(self))
            return
        self.post_message(self.Reset(self))

    # ----- mouse ----------------------------------------------------------------------------------
    def _bar_width(self) -> int:
        return max(self.content_size.width - VALUE_WIDTH, 2)

    def _value_at(self, x: int) -> float:
        bar = self._bar_width()
        return round(min(max(x, 0), bar - 1) / (bar - 1) * self.maximum, 2)

    def on_mouse_down(self, event: events.MouseDown) -> None:
        offset = event.get_content_offset(self)
        if offset is None or offset.x >= self._bar_width():
            return
        self.focus()
        self._dragging = True
        self.capture_mouse()
        self._user_set(self._value_at(offset.x))

    def on_mouse_move(self, event: events.MouseMove) -> None:
        if self._dragging:
            self._user_set(self._value_at(event.get_content_offset_capture(self).x))

    def on_mouse_up(self, event: events.MouseUp) -> None:
        if self._dragging:
            self._dragging = False
            self.release_mouse()

    # ----- drawing --------------------------------------------------------------------------------
    def render(self) -> Text:
        bar = self._bar_width()
        position = round(self.value / self.maximum * (bar - 1)) if self.maximum else 0
        text = Text(no_wrap=True, overflow="crop")
        text.append("━" * position, self.get_component_rich_style("slider--filled"))
        text.append("●", self.get_component_rich_style("slider--thumb"))
        text.append("─" * (bar - 1 - position), self.get_component_rich_style("slider--empty"))
        text.append(f"{100 * self.value:>{VALUE_WIDTH - 1}.1f}%", self.get_component_rich_style("slider--value"))
        return text

