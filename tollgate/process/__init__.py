"""Running the gateway: the command line, one server process, the supervisor of workers, the demo, the public listener's routes."""
