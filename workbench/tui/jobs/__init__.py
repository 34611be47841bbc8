"""The app's background jobs, as mixins of `WorkbenchApp`, and what their workers share."""
