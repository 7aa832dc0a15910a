# The two commands: `make run` runs Gantry on embedded defaults, `make test` runs the whole suite.
.PHONY: run test bootstrap engine clean

run:
	@bin/gantry-run

test:
	@bin/gantry-test

# Pieces of the above, for when you want just one.
bootstrap:
	@bin/gantry-bootstrap requirements.txt

engine:
	@bin/gantry-install-engine

clean:
	rm -rf .venv var test-output
