"""The verdict: why a target fails from a source, with its evidence and the next command.

`rules.diagnose` applies the rules in the order docs/diagnosis.md gives; `inputs` holds what a
diagnosis is given (the failing round, the same source's control targets, the other sources);
`findings` says what each step's evidence shows; `comparisons` holds the derived steps that
look beyond one round (source_compare, control_external); `failure_shapes` the last rules, on
how a network step failed. Pure: no I/O, no clock.
"""
