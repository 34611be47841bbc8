"""The job layer under the app and the headless commands: a table of job kinds, `Jobs` that runs them
through an injected runner and owns the engine once loaded, and the events it emits. UI-free."""
