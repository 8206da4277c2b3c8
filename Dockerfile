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
# (BOUNCEPROXY_RELAY_USERS + TLS) or BOUNCEPROXY_RELAY__ALLOW_NETWORKS.
ENV BOUNCEPROXY_STORE__PATH=/data/bounceproxy.db \
    BOUNCEPROXY_RELAY__LISTEN=0.0.0.0:2525 \
    BOUNCEPROXY_INBOUND__LISTEN=0.0.0.0:2526 \
    PYTHONUNBUFFERED=1
USER bounceproxy
WORKDIR /data
VOLUME ["/data"]
# The bounce MX listens on 2526 inside (no root needed); publish it as port 25: -p 25:2526
EXPOSE 2525 2526
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD python -c "import smtplib; s = smtplib.SMTP('127.0.0.1', 2525, timeout=4); s.noop(); s.quit()" || exit 1
ENTRYPOINT ["bounceproxy"]
CMD ["serve", "-c", "/etc/bounceproxy/config.toml"]
