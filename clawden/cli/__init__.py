"""The operator's tools: the `clawden` command (`main`), its subcommands (`commands/`), and what they run
(doctor, status, logview, units, image). Nothing in the kernel or a service imports this package."""
