"""trainviz's core machinery, shared by every capability: the probe set, layer resolution, hooks, the no-trace
guard, the pixel mapping, model outputs, the overhead budget, argument checks, thread caps and host transfer."""
