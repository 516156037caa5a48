using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Haven.Server.Jobs;

/// <summary>
/// The server's background work: the scheduler's rounds, the sending of notifications, and the maintenance of the
/// tenants' repositories (in its own loop, since a prune may take long and must not hold up the scheduler).
/// </summary>
internal sealed class JobBackground(JobService jobs, Notifier notifier, Repositories.RepositoryMaintenance maintenance, TimeProvider time, ILogger<JobBackground> log) : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var sending = notifier.RunAsync(stoppingToken);
        var maintaining = MaintainAsync(stoppingToken);
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

        foreach (var task in new[] { sending, maintaining })
        {
            try
            {
                await task.ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
            }
        }
    }

    private async Task MaintainAsync(CancellationToken ct)
    {
        // Looks for due tenants at the scheduler's pace; each tenant is maintained once per maintenance interval.
        using var timer = new PeriodicTimer(jobs.Options.TickInterval, time);
        while (await timer.WaitForNextTickAsync(ct).ConfigureAwait(false))
        {
            try
            {
                await maintenance.RunDueAsync(ct).ConfigureAwait(false);
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                log.LogError("maintenance round failed: {Message}", e.Message);
            }
        }
    }
}
