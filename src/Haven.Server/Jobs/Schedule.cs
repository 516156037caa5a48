using Haven.Core;

namespace Haven.Server.Jobs;

/// <summary>
/// When a plan runs. Forms:
/// <list type="bullet">
/// <item><c>@every 15m</c>, <c>@every 6h</c>: at fixed intervals counted from the Unix epoch (so every server instance
/// agrees), at least 1 minute, or 1 second for tests (<c>@every 5s</c>).</item>
/// <item><c>@hourly</c>, <c>@daily</c>, <c>@weekly</c>: as cron's <c>0 * * * *</c>, <c>0 0 * * *</c>, <c>0 0 * * 0</c>.</item>
/// <item>five cron fields, minute hour day-of-month month day-of-week, each <c>*</c>, a number, a range <c>a-b</c>,
/// a step <c>*/n</c> or <c>a-b/n</c>, or a comma list of those; day-of-week 0-7 (0 and 7 are Sunday). As in cron,
/// when both day fields are restricted a day matches if either does.</item>
/// </list>
/// Times are UTC.
/// </summary>
public sealed class Schedule
{
    private readonly TimeSpan? _every;
    private readonly bool[] _minutes = new bool[60];
    private readonly bool[] _hours = new bool[24];
    private readonly bool[] _days = new bool[32];
    private readonly bool[] _months = new bool[13];
    private readonly bool[] _weekdays = new bool[7];
    private readonly bool _anyDay;
    private readonly bool _anyWeekday;

    private Schedule(string text, TimeSpan every)
    {
        Text = text;
        _every = every;
    }

    private Schedule(string text, string[] fields)
    {
        Text = text;
        Fill(fields[0], _minutes, 0, 59, "minute");
        Fill(fields[1], _hours, 0, 23, "hour");
        Fill(fields[2], _days, 1, 31, "day of month");
        Fill(fields[3], _months, 1, 12, "month");
        var weekdays = new bool[8];
        Fill(fields[4], weekdays, 0, 7, "day of week");
        for (int i = 0; i < 7; i++)
        {
            _weekdays[i] = weekdays[i] || (i == 0 && weekdays[7]);
        }

        _anyDay = fields[2] == "*";
        _anyWeekday = fields[4] == "*";
    }

    public string Text { get; }

    public static Schedule Parse(string text)
    {
        string t = text.Trim();
        if (t.StartsWith("@every ", StringComparison.Ordinal))
        {
            var every = ParseInterval(t["@every ".Length..].Trim()) ?? throw Invalid(text, "write an interval such as @every 30m or @every 6h");
            return new Schedule(t, every);
        }

        string cron = t switch
        {
            "@hourly" => "0 * * * *",
            "@daily" or "@midnight" => "0 0 * * *",
            "@weekly" => "0 0 * * 0",
            "@monthly" => "0 0 1 * *",
            _ => t,
        };
        var fields = cron.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        if (fields.Length != 5)
        {
            throw Invalid(text, "write five cron fields (minute hour day month weekday), e.g. '30 2 * * *', or @daily, or @every 6h");
        }

        return new Schedule(t, fields);
    }

    private static TimeSpan? ParseInterval(string s)
    {
        if (s.Length < 2 || !long.TryParse(s[..^1], out long n) || n <= 0)
        {
            return null;
        }

        var span = s[^1] switch
        {
            's' => TimeSpan.FromSeconds(n),
            'm' => TimeSpan.FromMinutes(n),
            'h' => TimeSpan.FromHours(n),
            'd' => TimeSpan.FromDays(n),
            _ => (TimeSpan?)null,
        };
        return span is { } v && v <= TimeSpan.FromDays(366) ? v : null;
    }

    private static HavenException Invalid(string text, string hint) => new(ErrorCode.Usage, $"'{text}' is not a schedule", hint);

    private void Fill(string field, bool[] set, int min, int max, string what)
    {
        foreach (var part in field.Split(','))
        {
            int step = 1;
            string range = part;
            int slash = part.IndexOf('/', StringComparison.Ordinal);
            if (slash >= 0)
            {
                if (!int.TryParse(part[(slash + 1)..], out step) || step < 1)
                {
                    throw Invalid(Text, $"the step in the {what} field '{part}' must be a positive number");
                }

                range = part[..slash];
            }

            int from, to;
            if (range == "*")
            {
                (from, to) = (min, max);
            }
            else if (range.Split('-') is [var a, var b] && int.TryParse(a, out from) && int.TryParse(b, out to))
            {
            }
            else if (int.TryParse(range, out from))
            {
                to = slash >= 0 ? max : from;
            }
            else
            {
                throw Invalid(Text, $"the {what} field '{part}' is not a number, range, list or step");
            }

            if (from < min || to > max || from > to)
            {
                throw Invalid(Text, $"the {what} field allows {min}-{max}; '{part}' is outside");
            }

            for (int v = from; v <= to; v += step)
            {
                set[v] = true;
            }
        }
    }

    /// <summary>The first time strictly after <paramref name="after"/> at which the schedule fires.</summary>
    public DateTimeOffset Next(DateTimeOffset after)
    {
        var utc = after.ToUniversalTime();
        if (_every is { } every)
        {
            long ticks = utc.UtcTicks - DateTimeOffset.UnixEpoch.UtcTicks;
            long next = ((ticks / every.Ticks) + 1) * every.Ticks;
            return DateTimeOffset.UnixEpoch.AddTicks(next);
        }

        // Minute by minute, skipping whole days and hours that cannot match: at most a few thousand steps a year.
        var t = new DateTimeOffset(utc.Year, utc.Month, utc.Day, utc.Hour, utc.Minute, 0, TimeSpan.Zero).AddMinutes(1);
        var limit = t.AddYears(5);
        while (t < limit)
        {
            if (!_months[t.Month] || !DayMatches(t))
            {
                t = new DateTimeOffset(t.Year, t.Month, t.Day, 0, 0, 0, TimeSpan.Zero).AddDays(1);
                continue;
            }

            if (!_hours[t.Hour])
            {
                t = new DateTimeOffset(t.Year, t.Month, t.Day, t.Hour, 0, 0, TimeSpan.Zero).AddHours(1);
                continue;
            }

            if (_minutes[t.Minute])
            {
                return t;
            }

            t = t.AddMinutes(1);
        }

        throw new HavenException(ErrorCode.Usage, $"the schedule '{Text}' never fires", "check the day and month fields (e.g. 31 2 would be 31 February)");
    }

    private bool DayMatches(DateTimeOffset t)
    {
        bool day = _days[t.Day];
        bool weekday = _weekdays[(int)t.DayOfWeek];
        return _anyDay && _anyWeekday ? true
            : _anyDay ? weekday
            : _anyWeekday ? day
            : day || weekday;
    }
}
