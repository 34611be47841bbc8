"""The widgets of the main screen and the plots."""
