"""The test suite: one folder per room of rlaif/ (core, engines, generation, judges, preferences, training,
flows, rehearsal), package/ for the package as a whole, support/ for what the tests share."""
