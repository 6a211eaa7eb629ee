{#
    Fails on every row whose text holds an email address, a phone number or a card-like
    number, unless the row is exempt (by default: confidential documents, which never
    reach a public caller). Retrieval serves chunk text verbatim, so personal data in a
    chunk is personal data in an answer. Links are left out before matching: a number
    in a URL (an article id, a tracking code) is an identifier, not a card or a phone.
#}
{% test no_pii(model, column_name, exempt_where="access_level = 'confidential'") %}

{%- set patterns = {
    'email address': '[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\\.[A-Za-z0-9-]+)*\\.[A-Za-z]{2,}',
    'phone number': '(\\+\\d{1,3}[ .-]?)?\\(?\\b\\d{3}\\)?[ .-]\\d{3}[ .-]\\d{4}\\b',
    'card-like number': '\\b\\d{4}([ -]?\\d{4}){2}[ -]?\\d{1,7}\\b',
} -%}

with findings as (

    {% for kind, pattern in patterns.items() %}
    select
        *,
        '{{ kind }}' as pii_kind
    from {{ model }}
    where {{ matches_pattern("regexp_replace(" ~ column_name ~ ", 'https?://[^[:space:]]+', ' ', 'g')", pattern) }}
    {% if not loop.last %}union all{% endif %}
    {% endfor %}

)

select * from findings
where not ({{ exempt_where }})

{% endtest %}
