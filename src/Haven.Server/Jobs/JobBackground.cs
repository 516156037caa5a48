using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Haven.Server.Jobs;

/// <summary>The server's background work: the scheduler's rounds and the sending of notifications.</summary>
internal sealed class JobBackground(JobService jobs, Notifier notifier, TimeProvider time, ILogger<JobBackground> log) : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var sending = notifier.RunAsync(stoppingToken);
        using var timer = new PeriodicTimer(jobs.Options.TickInterval, time);
        try
        {
            do
            {
                try
                {
                    await jobs.TickAsync(stoppingToken).ConfigureAwait(false);
                }
                catch (Exception e) when (e is not OperationCanceledException)
                {
                    // A database hiccup must not stop the scheduler: the next round tries again.
                    log.LogError("scheduler round failed: {Message}", e.Message);
                }
            }
            while (await timer.WaitForNextTickAsync(stoppingToken).ConfigureAwait(false));
        }
        catch (OperationCanceledException)
        {
        }

        try
        {
            await sending.ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
        }
    }
}
