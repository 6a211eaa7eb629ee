{#
    Fails on every row whose text still holds an email address, a phone number or a
    card-like number, unless the row is exempt: by default, rows whose pii_action is
    `allow` (vars.retrieval.pii_policy; confidential documents, which never reach a public
    caller). Rows the policy blocks fail on any match; rows it redacts fail only if the
    redactor left one, so this checks what the policy leaves, with the same patterns the
    redactor uses (macros/pii_patterns.sql, generated from python_jobs/chunk/pii.py). A row
    whose action is unknown (null) is checked, never exempt. Retrieval serves chunk text
    verbatim, so personal data in a chunk is personal data in an answer. Links are left out
    before matching: a number in a URL (an article id, a tracking code) is an identifier,
    not a card or a phone.
#}
{% test no_pii(model, column_name, exempt_where="pii_action = 'allow'") %}

with findings as (

    {% for kind, pattern in pii_patterns().items() %}
    select
        *,
        '{{ kind }}' as pii_kind
    from {{ model }}
    where {{ matches_pattern(replace_pattern(column_name, pii_link_pattern(), ' '), pattern) }}
    {% if not loop.last %}union all{% endif %}
    {% endfor %}

)

select * from findings
where not coalesce({{ exempt_where }}, false)

{% endtest %}
