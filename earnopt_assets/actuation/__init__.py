"""Acting on the plan: shares -> absolute limits, the Docker actuator with its guardrails, the record of
every action (``actuations``) and the containers' measured use (``resource_usage``)."""
