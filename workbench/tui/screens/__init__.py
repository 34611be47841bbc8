"""The screens and dialogs pushed over the main screen."""
