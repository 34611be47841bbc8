"""The pruning engine: the `Engine` facade (`facade`) over its parts (weights, calibration capture and cache, signals, planner, state, statistics, masks, gradients). Never imports textual."""
