"""pytest plugin for LiveKit agents: a verified stack, rooms, real workers, participants, webhooks."""
