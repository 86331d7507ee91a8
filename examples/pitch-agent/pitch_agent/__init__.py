"""Example later epic: the pitch agent."""
