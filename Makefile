# The two commands: `make run` runs Gantry on embedded defaults, `make test` runs the whole suite.
.PHONY: run test test-faults bootstrap engine clean

run:
	@bin/gantry-run

test:
	@bin/gantry-test

# The production topology (bin/gantry-cluster: its own PostgreSQL, Redis, MLflow, two web, two
# workers, beat, a two-node Ray) and the faults broken on it, one by one: ~15 min on 2 cores.
test-faults:
	@GANTRY_FAULTS=1 bin/gantry-test tests/faults -s

# Pieces of the above, for when you want just one.
bootstrap:
	@bin/gantry-bootstrap requirements.txt

engine:
	@bin/gantry-install-engine

clean:
	rm -rf .venv var test-output
