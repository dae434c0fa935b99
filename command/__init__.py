"""The district command side: the console (`console`, `console_cli`), the fleet-wide dedup of uplinks heard
by several gateways (`dedup`), and the command service and web console as they arrive (issues 15, 16)."""
