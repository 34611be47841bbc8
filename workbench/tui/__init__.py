"""The workbench app (Textual). Only modules in this package import textual, and only the widget,
screen and app modules do: `history`, `edits`, `format`, `themes` and `recovery` are UI-free."""
