"""The sensitivity feature: the scan job, its heat column beside the sliders, its command."""
