# The two commands of the README. Both build (or reuse) the cached environment first.
SHELL := /bin/bash
.PHONY: demo test bench env

env:
	@deploy/env.sh >/dev/null

demo:
	@env=$$(deploy/env.sh) && "$$env/bin/coldstart" demo $(ARGS)

test:
	@env=$$(deploy/env.sh) && "$$env/bin/python" -m pytest $(ARGS)

bench:
	@env=$$(deploy/env.sh) && "$$env/bin/coldstart" bench $(ARGS)
