using System.Globalization;
using Haven.Core;

namespace Haven.Cli.Infrastructure;

/// <summary>Parsing and printing of sizes and durations.</summary>
public static class Units
{
    /// <summary>"100", "10k", "1.5M", "2G", "1T" (powers of 1024; a trailing B or iB is allowed).</summary>
    public static long ParseSize(string text, string option)
    {
        var s = text.Trim().ToUpperInvariant();
        if (s.EndsWith("IB", StringComparison.Ordinal)) s = s[..^2];
        else if (s.EndsWith('B')) s = s[..^1];
        long factor = 1;
        if (s.Length > 0 && "KMGT".Contains(s[^1]))
        {
            factor = s[^1] switch { 'K' => 1L << 10, 'M' => 1L << 20, 'G' => 1L << 30, _ => 1L << 40 };
            s = s[..^1];
        }

        if (!double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out double value) || value < 0)
        {
            throw new HavenException(ErrorCode.Usage, $"{option}: '{text}' is not a size (examples: 500k, 10M, 2G)");
        }

        return (long)(value * factor);
    }

    /// <summary>"30s", "5m", "2h", "7d", "1h30m"; a bare number is seconds.</summary>
    public static TimeSpan ParseDuration(string text, string option)
    {
        var s = text.Trim();
        if (double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out double seconds) && seconds >= 0)
        {
            return TimeSpan.FromSeconds(seconds);
        }

        var total = TimeSpan.Zero;
        int i = 0;
        bool any = false;
        while (i < s.Length)
        {
            int start = i;
            while (i < s.Length && (char.IsDigit(s[i]) || s[i] == '.'))
            {
                i++;
            }

            if (start == i || i == s.Length || !double.TryParse(s[start..i], NumberStyles.Float, CultureInfo.InvariantCulture, out double n))
            {
                throw new HavenException(ErrorCode.Usage, $"{option}: '{text}' is not a duration (examples: 30s, 5m, 2h, 7d, 1y2m)");
            }

            char unit = s[i++];
            total += unit switch
            {
                's' => TimeSpan.FromSeconds(n),
                'm' => TimeSpan.FromMinutes(n),
                'h' => TimeSpan.FromHours(n),
                'd' => TimeSpan.FromDays(n),
                'w' => TimeSpan.FromDays(7 * n),
                'y' => TimeSpan.FromDays(365 * n),
                _ => throw new HavenException(ErrorCode.Usage, $"{option}: unknown unit '{unit}' in '{text}' (use s, m, h, d, w, y)"),
            };
            any = true;
        }

        return any ? total : throw new HavenException(ErrorCode.Usage, $"{option}: '{text}' is not a duration");
    }

    public static string Bytes(long bytes)
    {
        string[] units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
        double v = bytes;
        int u = 0;
        while (Math.Abs(v) >= 1024 && u < units.Length - 1)
        {
            v /= 1024;
            u++;
        }

        return u == 0 ? $"{bytes} B" : string.Create(CultureInfo.InvariantCulture, $"{v:0.00} {units[u]}");
    }

    public static string Duration(TimeSpan t) =>
        t.TotalHours >= 1 ? $"{(int)t.TotalHours}:{t.Minutes:00}:{t.Seconds:00}" : $"{t.Minutes}:{t.Seconds:00}";

    public static string Count(long n) => n.ToString("N0", CultureInfo.InvariantCulture);
}
