# Copyright (c) berth.stack maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # An app's blue/green services, as the compose_app role's compose_app_services holds them and
    # plugins/module_utils/_service_model.py SERVICE_SPEC defines them.
    DOCUMENTATION = r"""
options:
  services:
    description:
      - The release's app services, in the order they start; each one's gates pass before the next starts.
      - The P(berth.stack.compose_app#role) role passes its C(compose_app_services) here as it is.
      - Services of the compose file not listed here start last and are gated on their HEALTHCHECK only,
        within the default O(services[].health_timeout).
      - "Every problem is reported at once and names the service, for example
        C(services[backend].ports.blue=70000: out of range 1-65535)."
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: Compose service name (Compose's rule, C(^[a-zA-Z0-9._-]+$)).
        type: str
        required: true
      image:
        description:
          - Image reference, C([registry[:port]/]path[:tag][@digest]), by tag or digest.
          - Rendered into the compose file by the P(berth.stack.compose_app#role) role; checked here to be an
            image reference, otherwise not used.
        type: str
      command:
        description:
          - Command overriding the image's.
          - Rendered into the compose file by the P(berth.stack.compose_app#role) role; not used here.
        type: list
        elements: str
      environment:
        description:
          - Environment variables (not secret, they are in the compose file).
          - Rendered into the compose file by the P(berth.stack.compose_app#role) role; not used here.
        type: dict
      secrets:
        description:
          - Secret environment variables, which the P(berth.stack.compose_app#role) role writes to the service's
            env file; never logged.
          - Checked here (names match C(^[A-Za-z_][A-Za-z0-9_]*$); a value with a backslash right before a single
            quote or at its end is refused, naming the variable and never the value), otherwise not used.
        type: dict
      secret_files:
        description:
          - Secrets delivered as files (a dict of file name to value), which the P(berth.stack.compose_app#role)
            role writes to the release directory (owned by the service's user, mode 0400, never logged) and compose
            mounts read-only at C(/run/secrets/NAME), for apps that read C(*_FILE) variables
            (C(JWT_SECRET_FILE=/run/secrets/jwt_secret)).
          - Checked here (names match C(^[A-Za-z0-9_][A-Za-z0-9_.-]*$); O(services[].user) must be C(UID) or
            C(UID:GID), the files' owner), otherwise not used. The rollout's release digest covers the files.
        type: dict
      healthcheck:
        description:
          - Compose C(healthcheck) of the service; the image's HEALTHCHECK applies when unset.
          - Rendered into the compose file by the P(berth.stack.compose_app#role) role; the health gate waits
            for the result Docker reports.
        type: dict
      user:
        description:
          - User (C(uid[:gid]) or name) the container runs as.
          - Rendered into the compose file by the P(berth.stack.compose_app#role) role; not used here.
        type: str
      container_port:
        description:
          - Port the service listens on inside the container (1-65535).
          - A service with a container port is behind nginx, with the default O(services[].upstream), unless
            O(services[].behind_nginx=false).
        type: int
      replicas:
        description: Containers of the service per color; the compose file should use C(deploy.replicas).
        type: int
        default: 1
      ports:
        description:
          - Host port (on 127.0.0.1) of the service's first replica in each color; replica N uses port + N - 1.
          - Required for services with a O(services[].container_port), an O(services[].upstream) or
            O(services[].probes). Every replica's port is in 1-65535, and no port is used twice across
            services and colors.
        type: dict
        suboptions:
          blue:
            description: First host port in the blue color.
            type: int
            required: true
          green:
            description: First host port in the green color.
            type: int
            required: true
      upstream:
        description:
          - nginx upstream that serves this service, written to C(<upstreams_dir>/<upstream>.conf) with one group
            per color (C(<upstream>__blue), C(<upstream>__green)) and switched by the color markers
            C(<upstreams_dir>/<upstream>.blue) and C(.green); lower-case letters, digits and C(_), starting with a
            letter, and used by one service only.
          - When unset and O(services[].container_port) is set, C(<app>_<name>) with every character outside
            C([a-z0-9_]) as C(_). When both are unset the service is not behind nginx.
        type: str
      behind_nginx:
        description:
          - V(false) for an internal HTTP service that other services call by name and nginx never routes to. It
            gets no upstream file, needs no site, and its O(services[].probes) run directly on its
            O(services[].ports) only; its O(services[].container_port) is the port those host ports map to.
          - With V(false), O(services[].upstream) must stay unset.
        type: bool
        default: true
      health_timeout:
        description:
          - Seconds to wait for the service's containers to be running and C(healthy), the boot grace included.
          - It does not make a Docker C(unhealthy) or a stopped container wait; those end the gate at once (after
            the grace). For a slow boot, set O(services[].boot_grace).
        type: float
        default: 120
      boot_grace:
        description:
          - "The one knob for a slow boot: seconds from the start of the service's containers during which a Docker
            C(unhealthy) is not final and failed probes on the new color's ports do not count toward
            O(services[].probes[].failures). A stopped container still ends the gate at once."
          - The P(berth.stack.compose_app#role) role also renders it as the healthcheck's C(start_period) (unless
            O(services[].healthcheck) sets one), so Docker does not count failures inside the grace either.
          - Below O(services[].health_timeout).
        type: float
        default: 0
      probes:
        description: HTTP probes against every replica of the new color, then through nginx after the switch.
        type: list
        elements: dict
        default: []
        suboptions:
          path:
            description: Request path, starting with C(/).
            type: str
            required: true
          method:
            description: HTTP method.
            type: str
            default: GET
          status:
            description: Expected HTTP status.
            type: int
            default: 200
          expect:
            description:
              - JMESPath expression that must be true on the JSON body,
                for example C(status == 'ok' && database == 'connected'). Compiled once, before anything runs.
            type: str
          successes:
            description: Consecutive successful answers needed (at least 1).
            type: int
            default: 3
          failures:
            description:
              - Consecutive failed answers after which the probe fails (at least 1), in the gates before the switch,
                through nginx and in the watch window, so a failing color is judged in seconds, not at the timeout.
            type: int
            default: 3
          interval:
            description: Seconds between two requests.
            type: float
            default: 1
          timeout:
            description:
              - Seconds after which the probe gives up when it neither passed nor failed
                O(services[].probes[].failures) times in a row.
            type: float
            default: 60
          request_timeout:
            description: Seconds one request may take.
            type: float
            default: 5
          nginx_path:
            description:
              - Path of the same check through nginx, when the site maps it elsewhere.
              - Defaults to O(services[].probes[].path).
            type: str
          headers:
            description: Extra request headers.
            type: dict
            default: {}
"""
