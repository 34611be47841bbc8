"""The workbench app (Textual): the only package that imports textual. Its UI-free logic lives in
`workbench.app`."""
