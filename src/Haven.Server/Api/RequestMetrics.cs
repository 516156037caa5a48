using System.Collections.Concurrent;
using System.Diagnostics;
using Haven.Protocol;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace Haven.Server.Api;

/// <summary>
/// How long the server takes to answer, per route and method, from the moment a request reaches the application to
/// its last byte (TLS handshakes and the network are outside). Durations go into log-spaced buckets (5% apart, 10 µs
/// to about 20 min), so percentiles come out within 5% whatever the number of requests, in fixed memory.
/// Long polls (<c>/api/v1/agent/poll</c>) wait on purpose and are counted apart from the others' percentiles.
/// </summary>
public sealed class RequestMetrics
{
    private const double Smallest = 0.01; // ms
    private const double Ratio = 1.05;
    private const int Buckets = 400; // 0.01 ms × 1.05^400 ≈ 3 × 10⁶ s: everything fits

    private static readonly double LogRatio = Math.Log(Ratio);

    private readonly ConcurrentDictionary<(string Method, string Route), Histogram> _routes = new();
    private DateTimeOffset _since = DateTimeOffset.UtcNow;

    public async Task InvokeAsync(HttpContext context, RequestDelegate next)
    {
        long start = Stopwatch.GetTimestamp();
        try
        {
            await next(context).ConfigureAwait(false);
        }
        finally
        {
            // Unmatched paths share one entry, so probing random paths cannot grow the table.
            string route = (context.GetEndpoint() as RouteEndpoint)?.RoutePattern.RawText ?? "(no route)";
            var histogram = _routes.GetOrAdd((context.Request.Method, route), _ => new Histogram());
            histogram.Add(Stopwatch.GetElapsedTime(start).TotalMilliseconds, context.Response.StatusCode);
        }
    }

    public void Reset()
    {
        _routes.Clear();
        _since = DateTimeOffset.UtcNow;
    }

    public ServerMetrics Snapshot()
    {
        var routes = _routes.OrderBy(r => r.Key.Route, StringComparer.Ordinal).ThenBy(r => r.Key.Method, StringComparer.Ordinal)
            .Select(r => r.Value.Describe(r.Key.Method, r.Key.Route)).ToList();
        var all = new Histogram();
        foreach (var (key, histogram) in _routes)
        {
            if (!key.Route.EndsWith("/agent/poll", StringComparison.Ordinal))
            {
                all.AddAll(histogram);
            }
        }

        using var process = Process.GetCurrentProcess();
        return new ServerMetrics(
            _since,
            DateTimeOffset.UtcNow,
            all.Describe("*", "all but long polls"),
            routes,
            process.WorkingSet64,
            PeakResidentBytes() ?? process.PeakWorkingSet64,
            GC.GetTotalMemory(forceFullCollection: false),
            process.Threads.Count);
    }

    /// <summary>VmHWM from /proc/self/status: the most memory the process held at once.</summary>
    private static long? PeakResidentBytes()
    {
        try
        {
            foreach (string line in File.ReadLines("/proc/self/status"))
            {
                if (line.StartsWith("VmHWM:", StringComparison.Ordinal) && long.TryParse(line.AsSpan(6).Trim().TrimEnd("kB").Trim(), out long kb))
                {
                    return kb * 1024;
                }
            }
        }
        catch (IOException)
        {
        }

        return null;
    }

    private sealed class Histogram
    {
        private readonly long[] _counts = new long[Buckets];
        private long _count;
        private long _errors;
        private long _maxMicros;

        public void Add(double ms, int status)
        {
            int bucket = ms <= Smallest ? 0 : Math.Min(Buckets - 1, (int)Math.Ceiling(Math.Log(ms / Smallest) / LogRatio));
            Interlocked.Increment(ref _counts[bucket]);
            Interlocked.Increment(ref _count);
            if (status >= 500)
            {
                Interlocked.Increment(ref _errors);
            }

            long micros = (long)(ms * 1000);
            long seen;
            while (micros > (seen = Interlocked.Read(ref _maxMicros)) && Interlocked.CompareExchange(ref _maxMicros, micros, seen) != seen)
            {
            }
        }

        public void AddAll(Histogram other)
        {
            for (int i = 0; i < Buckets; i++)
            {
                _counts[i] += Interlocked.Read(ref other._counts[i]);
            }

            _count += Interlocked.Read(ref other._count);
            _errors += Interlocked.Read(ref other._errors);
            _maxMicros = Math.Max(_maxMicros, Interlocked.Read(ref other._maxMicros));
        }

        public RouteMetrics Describe(string method, string route)
        {
            long count = Interlocked.Read(ref _count);
            return new RouteMetrics(method, route, count, Interlocked.Read(ref _errors), Percentile(count, 0.50), Percentile(count, 0.95), Percentile(count, 0.99), Interlocked.Read(ref _maxMicros) / 1000.0);
        }

        /// <summary>The upper edge of the bucket that holds the <paramref name="q"/> quantile (at most 5% high).</summary>
        private double Percentile(long count, double q)
        {
            if (count == 0)
            {
                return 0;
            }

            long rank = (long)Math.Ceiling(q * count);
            long seen = 0;
            for (int i = 0; i < Buckets; i++)
            {
                seen += Interlocked.Read(ref _counts[i]);
                if (seen >= rank)
                {
                    return Math.Round(Math.Min(Smallest * Math.Pow(Ratio, i), Interlocked.Read(ref _maxMicros) / 1000.0), 3);
                }
            }

            return Interlocked.Read(ref _maxMicros) / 1000.0;
        }
    }
}
