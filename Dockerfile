# bounceproxy: relay on 2525, bounce MX on 25, the bounce log on the /data volume.
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.12-slim
COPY --from=build /install /usr/local
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin bounceproxy \
    && mkdir -p /data && chown bounceproxy /data
COPY config.toml /etc/bounceproxy/config.toml
# Configure with BOUNCEPROXY_<SECTION>__<KEY>; secrets through the variables the config names.
# In a container the listeners face the container network: the relay then requires AUTH
# (BOUNCEPROXY_RELAY_USERS + TLS) or BOUNCEPROXY_RELAY__ALLOW_NETWORKS, and the API (/metrics, the
# dashboard, /api/) a bearer token in BOUNCEPROXY_API_TOKEN; neither starts without. Publish the relay
# and the API on the host's 127.0.0.1 unless clients elsewhere use AUTH (README, Docker).
# shutdown_grace stays inside `docker stop`'s default 10 s (raise both with --stop-timeout).
ENV BOUNCEPROXY_STORE__PATH=/data/bounceproxy.db \
    BOUNCEPROXY_RELAY__LISTEN=0.0.0.0:2525 \
    BOUNCEPROXY_API__LISTEN=0.0.0.0:8025 \
    BOUNCEPROXY_INBOUND__LISTEN=0.0.0.0:2526 \
    BOUNCEPROXY_SERVICE__SHUTDOWN_GRACE=8 \
    PYTHONUNBUFFERED=1
USER bounceproxy
WORKDIR /data
VOLUME ["/data"]
# The bounce MX listens on 2526 inside (no root needed); publish it as port 25: -p 25:2526
# The relay, the bounce MX and the API.
EXPOSE 2525 2526 8025
# Healthy when /healthz says so: 503 while the upstream is down or the bounce log refuses writes.
# It asks [api] listen from inside the container (0.0.0.0 is asked on 127.0.0.1); /healthz needs no token.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD python -c "import os, urllib.request; h, _, p = os.environ.get('BOUNCEPROXY_API__LISTEN', '127.0.0.1:8025').rpartition(':'); h = h.strip('[]'); h = '127.0.0.1' if h in ('', '0.0.0.0', '::') else h; h = f'[{h}]' if ':' in h else h; urllib.request.urlopen(f'http://{h}:{p}/healthz', timeout=4)" || exit 1
ENTRYPOINT ["bounceproxy"]
CMD ["serve", "-c", "/etc/bounceproxy/config.toml"]
