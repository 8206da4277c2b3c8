"""aiosmtpd builds each session's command, hook and AUTH tables by introspection; the relay's sessions
after the first copy them from a template (proxy.smtp_guard._SessionTemplate). A copied session must be
what aiosmtpd itself would have built, bound to itself, and new arguments must build a new template."""
from __future__ import annotations

import asyncio

from aiosmtpd.smtp import SMTP

from proxy.relay.server import RelaySMTP
from proxy.smtp_guard import Limits, _SessionTemplate


class Hooks:
    async def handle_DATA(self, server, session, envelope):
        return "250 2.0.0 OK"


def make(handler, **kwargs) -> RelaySMTP:
    return RelaySMTP(handler, hostname="relay.test", limits=Limits(10, 10, 60), enable_SMTPUTF8=True, **kwargs)


async def test_a_copied_session_is_what_aiosmtpd_builds_and_is_bound_to_itself():
    handler = Hooks()
    RelaySMTP._template = None
    first = make(handler)
    template = RelaySMTP.__dict__["_template"]
    assert isinstance(template, _SessionTemplate)
    second = make(handler)
    assert RelaySMTP.__dict__["_template"] is template  # reused, not rebuilt
    stock = SMTP.__new__(RelaySMTP)
    SMTP.__init__(stock, handler, hostname="relay.test", enable_SMTPUTF8=True)  # aiosmtpd's own build
    assert set(vars(stock)) <= set(vars(second))
    for name in ("hostname", "data_size_limit", "enable_SMTPUTF8", "_handle_hooks", "_ehlo_hook_ver",
                 "_auth_required", "_timeout_duration", "event_handler", "loop"):
        assert getattr(second, name) == getattr(stock, name), name
    assert dict(second._smtp_methods).keys() == stock._smtp_methods.keys()
    for command in ("EHLO", "MAIL", "RCPT", "DATA", "QUIT"):
        assert second._smtp_methods.get(command).__self__ is second
        assert second._smtp_methods.get(command).__func__ is stock._smtp_methods[command].__func__
    assert second._smtp_methods.get("NOPE") is None
    assert {m: (a.method.__func__, a.is_builtin) for m, a in second._auth_methods.items()} == \
        {m: (a.method.__func__, a.is_builtin) for m, a in stock._auth_methods.items()}
    assert all(a.method.__self__ is second for a in second._auth_methods.values() if a.is_builtin)
    assert second._stream_reader is not first._stream_reader and second.session is None


async def test_other_arguments_build_a_new_template():
    handler = Hooks()
    RelaySMTP._template = None
    make(handler)
    template = RelaySMTP.__dict__["_template"]
    other = RelaySMTP(handler, hostname="other.test", limits=Limits(10, 10, 60), enable_SMTPUTF8=True)
    assert other.hostname == "other.test" and RelaySMTP.__dict__["_template"] is not template
    make(Hooks())  # another handler: its own hooks
    assert RelaySMTP.__dict__["_template"].handler is not handler
    await asyncio.sleep(0)
