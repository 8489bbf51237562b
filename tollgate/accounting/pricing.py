"""Cost of a request from the price table and the cost rules, in integer nano-units of the currency (exact sums).

Prompt tokens read from or written to a provider's prompt cache are parts of
``prompt_tokens`` with prices of their own (``cached_input_per_1k``,
``cache_write_per_1k``; the input price when unset); the rest of the prompt is
charged at ``input_per_1k``. Cost rules on ``prompt_tokens`` count the whole prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

from tollgate.config.accounting import CostRule, Price, PricingConfig

__all__ = ["NANOS", "Pricing", "to_money"]

# Costs are kept as integers of 1e-9 currency units, so that sums over millions
# of requests (and HINCRBY in Redis) stay exact; a price of $0.00015 per 1K
# tokens is 150 nanos per token.
NANOS = 1_000_000_000


def to_money(nanos: int) -> float:
    """Nanos as a currency amount (rounded to 1e-9, the unit it is kept in)."""
    return round(nanos / NANOS, 9)


@dataclass(frozen=True, slots=True)
class _ModelRate:
    input_nanos_per_token: float
    output_nanos_per_token: float
    cached_input_nanos_per_token: float
    cache_write_nanos_per_token: float
    rules: tuple[CostRule, ...]


class Pricing:
    """Compiled once per config version; :meth:`cost_nanos` is a few multiplications."""

    __slots__ = ("config", "currency", "named", "plain", "plain_unnamed", "_rates", "_default", "_unnamed")

    def __init__(self, config: PricingConfig) -> None:
        self.config = config
        self.currency = config.currency
        self._default = config.default
        # Every model the config names (with a price, or in a cost rule) has its rate here, compiled now; any other
        # name (a request may name anything) shares one rate: the default price and the rules for every model. So
        # the table never grows after compilation, whatever the requests name.
        self._rates: dict[str, _ModelRate] = {name: self._rate(name, price) for name, price in config.models.items()}
        for rule in config.resources:
            for name in rule.models or ():
                if name not in self._rates:
                    self._rates[name] = self._rate(name, self._default)
        self._unnamed = self._rate(None, self._default)
        # For the flusher's per-record pricing without a call (records.fields_of): the names with a rate of their
        # own (what priced_model looks for), and the input and output nanos per token of those whose cost is their
        # tokens at those prices alone (no cost rule): cost_nanos without cache parts is then exactly
        # round(prompt * input + completion * output).
        self.named: dict[str, object] = dict(self._rates)
        self.plain: dict[str, tuple[float, float]] = {
            name: (rate.input_nanos_per_token, rate.output_nanos_per_token)
            for name, rate in self._rates.items()
            if not rate.rules
        }
        # The same for every name the config does not price (the default price), when no cost rule applies to them.
        self.plain_unnamed: tuple[float, float] | None = (
            None if self._unnamed.rules else (self._unnamed.input_nanos_per_token, self._unnamed.output_nanos_per_token)
        )

    def _rate(self, model: str | None, price: Price) -> _ModelRate:
        rules = tuple(r for r in self.config.resources if r.enabled and (r.models is None or model in r.models))
        return _ModelRate(
            price.input_per_1k * NANOS / 1000,
            price.output_per_1k * NANOS / 1000,
            price.cached_input * NANOS / 1000,
            price.cache_write * NANOS / 1000,
            rules,
        )

    def priced_model(self, served: str | None, requested: str | None, deployment: str | None = None) -> str | None:
        """The model a request is billed as: the deployment's model name when it has a price (the model the provider
        ran), else the public model that served, when it has one, else the one requested."""
        if deployment is not None and deployment in self._rates:
            return deployment
        if served is not None and served in self._rates:
            return served
        return requested if requested is not None else served

    def _model_rate(self, model: str | None) -> _ModelRate:
        rate = self._rates.get(model) if model is not None else None
        return self._unnamed if rate is None else rate

    @property
    def compiled_rates(self) -> int:
        """How many rates the table holds (fixed by the config: for tests and operators)."""
        return len(self._rates)

    def cost_nanos(
        self,
        model: str | None,
        prompt_tokens: int,
        completion_tokens: int,
        requests: int = 1,
        *,
        cached_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> int:
        """What one request costs: tokens at the model's prices, plus every enabled cost rule that applies to it.

        ``cached_tokens`` and ``cache_write_tokens`` are parts of ``prompt_tokens`` (read from and written to the
        provider's prompt cache), each at its own price; the rest of the prompt is at the input price.
        """
        rate = self._rates.get(model) if model is not None else None  # the usual case, without a call
        if rate is None:
            rate = self._model_rate(model)
        if cached_tokens or cache_write_tokens:
            uncached = max(prompt_tokens - cached_tokens - cache_write_tokens, 0)
            cost = (
                uncached * rate.input_nanos_per_token
                + cached_tokens * rate.cached_input_nanos_per_token
                + cache_write_tokens * rate.cache_write_nanos_per_token
                + completion_tokens * rate.output_nanos_per_token
            )
        else:
            cost = prompt_tokens * rate.input_nanos_per_token + completion_tokens * rate.output_nanos_per_token
        for rule in rate.rules:
            if rule.resource == "requests":
                units = requests
            elif rule.resource == "prompt_tokens":
                units = prompt_tokens
            elif rule.resource == "completion_tokens":
                units = completion_tokens
            else:
                units = prompt_tokens + completion_tokens
            cost += units * rule.unit_cost * NANOS / rule.billing_unit
        return round(cost)

    def rates(self, model: str | None) -> tuple[float, float, float]:
        """A request's cost as ``fixed + input * prompt_tokens + output * completion_tokens`` nanos: the three terms.

        What a stream holding a money budget needs to price each event it relays, without a call per event.
        """
        rate = self._model_rate(model)
        fixed, per_input, per_output = 0.0, rate.input_nanos_per_token, rate.output_nanos_per_token
        for rule in rate.rules:
            each = rule.unit_cost * NANOS / rule.billing_unit
            if rule.resource == "requests":
                fixed += each
            elif rule.resource == "prompt_tokens":
                per_input += each
            elif rule.resource == "completion_tokens":
                per_output += each
            else:
                per_input += each
                per_output += each
        return fixed, per_input, per_output

    def table(self) -> dict[str, object]:
        """The price table as the admin API shows it."""
        return {
            "currency": self.currency,
            "models": {name: _price_view(p) for name, p in self.config.models.items()},
            "default": _price_view(self._default),
            "resources": [
                {
                    "resource": r.resource,
                    "unit_cost": r.unit_cost,
                    "billing_unit": r.billing_unit,
                    "enabled": r.enabled,
                    "models": list(r.models) if r.models is not None else None,
                }
                for r in self.config.resources
            ],
        }


def _price_view(price: Price) -> dict[str, float]:
    """One model's prices as the admin API shows them: the cache prices in force (the input price when unset)."""
    return {
        "input_per_1k": price.input_per_1k,
        "output_per_1k": price.output_per_1k,
        "cached_input_per_1k": price.cached_input,
        "cache_write_per_1k": price.cache_write,
    }
