"""Step ramp load shape, to find the knee: `locust -f loadtest/locustfile.py,loadtest/shapes.py ...`.

Kept out of locustfile.py because Locust uses any LoadTestShape it finds. Users go step_users, 2*step_users, ...
up to -u, each step held --step-seconds (locustfile options); -t, when given, cuts the ramp short.
"""
from __future__ import annotations

from locust import LoadTestShape

from loadtest.ramp import step_target


class StepRampShape(LoadTestShape):
    use_common_options = True  # -u is the top of the ramp, -r the spawn rate, -t an upper bound

    def tick(self):
        opts = self.runner.environment.parsed_options
        users = step_target(self.get_run_time(), opts.step_users, opts.step_seconds, opts.num_users,
                            opts.run_time or None)
        if users is None:
            return None
        return users, max(float(opts.spawn_rate or 0), float(opts.step_users))
