"""The workbench app (Textual). Only modules in this package import textual, and only the app, `messages`,
`commands`, `widgets/` and `screens/` do: `controller`, `history`, `edits`, `format`, `themes` and
`recovery` are UI-free."""
