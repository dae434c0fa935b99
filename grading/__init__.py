"""The plan's grading as a library: `engine` (indicator colours and the GB 55009 / plan tables), `incidents`
(the incident lifecycle), `report` (the district's reports). Used by the gateway's grading plugin and the
district command service; knows nothing of MQTT sockets or the daemon."""
