using System.Text.Json;
using System.Text.Json.Nodes;

namespace Haven.Cli.Infrastructure;

/// <summary>
/// Where a command's words go: results to stdout (text, or one JSON document with --json), messages and progress
/// to stderr. Progress is a live line on a terminal and a plain line every <see cref="PlainInterval"/> otherwise.
/// </summary>
public sealed class Output(bool json, bool quiet)
{
    public static readonly TimeSpan PlainInterval = TimeSpan.FromSeconds(
        double.TryParse(Environment.GetEnvironmentVariable("HAVEN_PROGRESS_INTERVAL"), System.Globalization.CultureInfo.InvariantCulture, out var s) ? s : 10);

    public bool IsJson => json;

    public bool IsQuiet => quiet;

    /// <summary>Prints a line of the text result (nothing in JSON mode).</summary>
    public void Line(string text = "")
    {
        if (!json)
        {
            Console.Out.WriteLine(text);
        }
    }

    /// <summary>Prints an informational line to stderr unless quiet or JSON.</summary>
    public void Info(string text)
    {
        if (!json && !quiet)
        {
            Console.Error.WriteLine(text);
        }
    }

    public static void Warn(string text) => Console.Error.WriteLine("warning: " + text);

    public void JsonResult(JsonNode node)
    {
        if (json)
        {
            Console.Out.WriteLine(node.ToJsonString(new JsonSerializerOptions { WriteIndented = false }));
        }
    }

    /// <summary>Runs <paramref name="render"/> periodically while <paramref name="work"/> runs; clears the live line at the end.</summary>
    public async Task<T> WithProgressAsync<T>(Task<T> work, Func<string> render)
    {
        if (json || quiet)
        {
            return await work.ConfigureAwait(false);
        }

        bool live = !Console.IsErrorRedirected;
        var interval = live ? TimeSpan.FromMilliseconds(250) : PlainInterval;
        int lastLength = 0;
        while (true)
        {
            var done = await Task.WhenAny(work, Task.Delay(interval)).ConfigureAwait(false);
            if (done == work)
            {
                break;
            }

            var line = render();
            if (live)
            {
                int width = Console.BufferWidth > 10 ? Console.BufferWidth - 1 : 100;
                if (line.Length > width)
                {
                    line = line[..width];
                }

                Console.Error.Write("\r" + line.PadRight(lastLength));
                lastLength = line.Length;
            }
            else
            {
                Console.Error.WriteLine(line);
            }
        }

        if (live && lastLength > 0)
        {
            Console.Error.Write("\r" + new string(' ', lastLength) + "\r");
        }

        return await work.ConfigureAwait(false);
    }

    /// <summary>A text progress bar: "[#####.....] 52%".</summary>
    public static string Bar(double fraction, int width = 20)
    {
        fraction = Math.Clamp(fraction, 0, 1);
        int filled = (int)Math.Round(fraction * width);
        return $"[{new string('#', filled)}{new string('.', width - filled)}] {fraction * 100,3:0}%";
    }

    public static string Rate(long bytes, TimeSpan elapsed) =>
        elapsed.TotalSeconds < 0.5 ? "" : Units.Bytes((long)(bytes / elapsed.TotalSeconds)) + "/s";

    public static string Eta(long done, long total, TimeSpan elapsed, bool totalKnown)
    {
        if (!totalKnown || done <= 0 || done >= total || elapsed.TotalSeconds < 1)
        {
            return "";
        }

        var remaining = TimeSpan.FromSeconds(elapsed.TotalSeconds * (total - done) / done);
        return "ETA " + Units.Duration(remaining);
    }
}
