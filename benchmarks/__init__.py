"""letkd benchmarks: speed, memory and accuracy; each prints figures as ratios measured in one run."""
