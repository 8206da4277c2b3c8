"""`bounceproxy doctor` against a real DNS server, a real upstream and the running bounce MX."""
from __future__ import annotations

from proxy import doctor
from proxy.app import Service
from tests.conftest import make_config
from tests.dnsserver import DNSServer

ZONES = {
    "bounces.good.test": ["300 MX 10 mx.good.test."],
    "mx.good.test": ["A 127.0.0.1"],
    "bounces.far.test": ["300 MX 10 mx.far.test."],
    "mx.far.test": ["A 192.0.2.77"],
    "sender.test": ['TXT "v=spf1 include:amazonses.com ~all"'],
    "_dmarc.sender.test": ['TXT "v=DMARC1; p=quarantine"'],
    "nospf.test": ['TXT "google-site-verification=abc"'],
}


async def test_doctor_reports_each_check(tmp_path, upstream, monkeypatch):
    monkeypatch.setenv("BOUNCEPROXY_VERP_KEY", "0123456789abcdef0123456789abcdef")
    async with DNSServer(ZONES) as dns:
        config = make_config(tmp_path, upstream.port,
                             inbound={"bounce_domains": ("bounces.good.test", "bounces.far.test", "bounces.none.test")},
                             preflight={"resolvers": (dns.address,), "timeout": 1.0})
        async with Service(config) as svc:
            import dataclasses

            from proxy.config import Address

            live = dataclasses.replace(config, inbound=dataclasses.replace(
                config.inbound, listen=Address("127.0.0.1", svc.inbound_address[1])))
            domains = ["sender.test", "nospf.test"]
            checks = await doctor.run_checks(live, domains)
    by_name = {c.name: c for c in checks}
    assert by_name["VERP key"].status == doctor.PASS
    assert by_name["upstream"].status == doctor.PASS and "127.0.0.1" in by_name["upstream"].detail
    assert by_name["MX of bounces.good.test"].status == doctor.PASS
    assert by_name["MX of bounces.far.test"].status == doctor.WARN and "192.0.2.77" in by_name["MX of bounces.far.test"].detail
    assert by_name["MX of bounces.none.test"].status == doctor.FAIL
    assert by_name["bounce MX relay test"].status == doctor.PASS
    assert by_name["SPF of sender.test"].status == doctor.PASS and by_name["DMARC of sender.test"].status == doctor.PASS
    assert by_name["SPF of nospf.test"].status == doctor.FAIL and by_name["DMARC of nospf.test"].status == doctor.FAIL
    assert all(c.line().startswith("[") for c in checks)


async def test_doctor_flags_a_missing_key_and_a_dead_upstream(tmp_path, monkeypatch):
    monkeypatch.delenv("BOUNCEPROXY_VERP_KEY", raising=False)
    config = make_config(tmp_path, 1)  # nothing listens on port 1
    checks = {c.name: c for c in doctor.check_secrets(config)}
    assert checks["VERP key"].status == doctor.FAIL
    upstream = await doctor.check_upstream(config)
    assert upstream.status == doctor.FAIL and "cannot connect" in upstream.detail


async def test_check_command_reports_suppression_and_dns(tmp_path):
    import asyncio
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    async with DNSServer({"dead.test": ["600 MX 0 ."], "live.test": ["300 MX 10 mx.live.test."],
                          "mx.live.test": ["A 127.0.0.1"]}) as dns:
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("BOUNCEPROXY_")},
               "PYTHONPATH": str(ROOT), "BOUNCEPROXY_PREFLIGHT__RESOLVERS": dns.address,
               "BOUNCEPROXY_STORE__PATH": str(tmp_path / "b.db")}

        def check(address):
            return subprocess.run([sys.executable, "-m", "proxy", "check", address], env=env, capture_output=True,
                                  text=True, cwd=tmp_path)

        dead = await asyncio.to_thread(check, "someone@dead.test")
        live = await asyncio.to_thread(check, "someone@live.test")
    assert dead.returncode == 0 and "not suppressed" in dead.stdout and "dns: null_mx" in dead.stdout
    assert "dns: ok" in live.stdout


async def test_doctor_checks_what_the_profile_needs_and_never_the_null_sender(tmp_path, upstream):
    """SES advice only for SES; `<>` (the null sender, as the log stores it) is no domain to ask DNS about."""
    import dataclasses

    async with DNSServer(ZONES) as dns:
        smtp = make_config(tmp_path, upstream.port, preflight={"resolvers": (dns.address,), "timeout": 1.0})
        ses = dataclasses.replace(smtp, upstream=dataclasses.replace(smtp.upstream, profile="ses"))
        resolver = doctor._resolver(smtp)
        for_smtp = {c.name: c for c in await doctor.check_sender_domains(["<>", "", "nospf.test"], resolver, smtp)}
        for_ses = {c.name: c for c in await doctor.check_sender_domains(["nospf.test"], resolver, ses)}
        everything = await doctor.run_checks(smtp, ["<>", "nospf.test"])
    assert set(for_smtp) == {"SPF of nospf.test", "DMARC of nospf.test"}
    assert for_smtp["SPF of nospf.test"].status == doctor.FAIL
    assert "amazonses" not in for_smtp["SPF of nospf.test"].detail and "127.0.0.1" in for_smtp["SPF of nospf.test"].detail
    assert "include:amazonses.com" in for_ses["SPF of nospf.test"].detail
    assert not any("<>" in c.name or "amazonses" in c.detail for c in everything)
    ses_only = {c.name: c for c in doctor.check_profile(ses)}
    assert "SES endpoint" in ses_only and "SES bounce domain" in ses_only and doctor.check_profile(smtp) == []


def test_doctor_json_prints_one_object_per_check(tmp_path):
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    (tmp_path / "config.toml").write_text('[inbound]\nenabled = false\n[preflight]\nresolvers = ["127.0.0.1:9"]\n'
                                          'timeout = 0.2\n')
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("BOUNCEPROXY_")}, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "proxy", "doctor", "--json", "-c", str(tmp_path / "config.toml")],
                            env=env, capture_output=True, text=True, cwd="/", timeout=60)
    checks = [json.loads(line) for line in result.stdout.splitlines()]
    by_name = {c["name"]: c for c in checks}
    assert set(checks[0]) == {"status", "name", "detail"}
    assert by_name["VERP key"]["status"] == "warn" and by_name["upstream"]["status"] == "warn"
    assert "simulator" in by_name["sender domains"]["detail"]
    assert all(c["status"] in ("pass", "warn", "fail") for c in checks)
    assert result.returncode == (1 if any(c["status"] == "fail" for c in checks) else 0)


async def test_doctor_checks_a_postgresql_store_connects(tmp_path, pg_url):
    """On PostgreSQL the store check connects: the schema's version when it answers, one failing line
    (no password) when it does not."""
    from proxy.store import store_for_url

    await (await store_for_url(pg_url).open()).close()  # migrated, as `bounceproxy migrate` leaves it
    good = make_config(tmp_path, store_url=pg_url)
    (connects,) = [c for c in [await doctor.check_store_connects(good)] if c.name == "store connection"]
    assert connects.status == doctor.PASS and connects.detail.startswith("schema version ")
    assert doctor.check_store(good).status == doctor.PASS
    bad = make_config(tmp_path, store_url="postgresql://bounceproxy@127.0.0.1:1/nothing")
    failed = await doctor.check_store_connects(bad)
    assert failed.status == doctor.FAIL and failed.detail.startswith("postgresql://bounceproxy@127.0.0.1:1/nothing: ")
    assert await doctor.gather_sender_domains(bad, ("extra.test",)) == ["extra.test"]  # the store check says why
