{#
    Fails on every combination of the columns that appears more than once: the grain of
    a model keyed by more than one column (a run and a node, a run and a metric).
#}
{% test unique_combination_of_columns(model, combination_of_columns) %}

select
    {{ combination_of_columns | join(', ') }},
    count(*) as occurrences
from {{ model }}
group by {{ combination_of_columns | join(', ') }}
having count(*) > 1

{% endtest %}
